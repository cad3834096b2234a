// Bus: see DESIGN.md
