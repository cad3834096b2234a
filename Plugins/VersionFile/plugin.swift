import Foundation
import PackagePlugin

/// Generates `BuildVersion.swift` (`let buildVersion = "<VERSION>"`) from the package's VERSION
/// file, the one place Berth's version is written: berthd reports it (io.berth.Daemon.Version,
/// `berthd --version`) and dist/install.sh installs it. A build step rather than a literal, so
/// a changed VERSION rebuilds what reads it.
@main
struct VersionFile: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let version = context.package.directoryURL.appendingPathComponent("VERSION")
        let output = context.pluginWorkDirectoryURL.appendingPathComponent("BuildVersion.swift")
        // One line of letters, digits and . + ~ -: anything else fails the build, never a daemon
        // reporting a garbled version.
        let script = """
            v=$(cat "$1") || exit 1
            case "$v" in ''|*[!0-9A-Za-z.+~-]*) echo "VERSION must be one line such as 1.2.3, not '$v'" >&2; exit 1;; esac
            printf '// Generated from VERSION by the VersionFile plugin: do not edit.\\nlet buildVersion = "%s"\\n' "$v" > "$2"
            """
        return [
            .buildCommand(displayName: "Generating BuildVersion.swift from VERSION",
                          executable: URL(fileURLWithPath: "/bin/sh"),
                          arguments: ["-c", script, "sh", version.path, output.path],
                          inputFiles: [version], outputFiles: [output]),
        ]
    }
}
