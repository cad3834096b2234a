// BerthCLI: see DESIGN.md
