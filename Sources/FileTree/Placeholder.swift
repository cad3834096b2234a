// FileTree: see DESIGN.md
