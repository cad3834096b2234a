import TestSupport

// The gates of before `.requires(…)` (Tests/TestSupport/Privileges.swift), kept only so that a
// branch written against them still compiles when merged: each was a Bool that skipped silently
// unless paired with `|| Privileges.underCI`. New tests use `.requires(…)`; convert on sight.

@available(*, deprecated, message: "use .requires(.privateBus)")
let endToEndToolsAvailable = Privileges.missing([.privateBus]) == nil

@available(*, deprecated, message: "use .requires(import1Requirements)")
let import1ToolsAvailable = Privileges.missing(import1Requirements) == nil

@available(*, deprecated, message: "use .requires(ociRequirements)")
let ociToolsAvailable = Privileges.missing(ociRequirements) == nil

@available(*, deprecated, message: "use .requires(machine1Requirements)")
let machine1Prerequisites = Privileges.missing(machine1Requirements) == nil
