// RawLoop: see DESIGN.md
