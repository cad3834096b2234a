// BackendConformance: see DESIGN.md
