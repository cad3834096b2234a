// Directory: see DESIGN.md
