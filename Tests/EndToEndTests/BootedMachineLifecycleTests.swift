import Foundation
import Testing
import TestSupport

/// The machine lifecycle under a real systemd 252 as PID 1: a real `systemd-nspawn --register=yes`
/// inside the booted system registers with berthd.service, berthd has systemd start
/// `machine-NAME.scope` holding the leader, and `machinectl terminate` stops it — compared with
/// what systemd-machined 252 does for the same commands in the same system.
extension BootedSystemdTests {
    /// A booted system as `systemWithBerthd` makes it, with the host's busybox (the cached root
    /// has none) in a read-only folder `busybox` names.
    private static func systemWithBerthdAndBusybox(_ name: String, busybox: TemporaryDirectory) throws -> (BootedSystemd, CommandResult) {
        try FileManager.default.copyItem(atPath: "/bin/busybox", toPath: busybox.appending("busybox"))
        let repo = BootedSystemd.packageRoot().path
        let bin = URL(fileURLWithPath: try BerthdProcess.binaryPath("berthd")).deletingLastPathComponent().path
        let system = try BootedSystemd(name: name, readOnlyBinds: [repo, bin, busybox.path])
        let install = try system.shell("cd '\(repo)' && dist/install.sh --bin '\(bin)' && systemctl enable --now berthd.service")
        return (system, install)
    }

    /// Makes a busybox root at /var/lib/machines/bb inside `system`.
    private static func makeBusyboxRoot(_ system: BootedSystemd, busybox: String) throws -> CommandResult {
        try system.shell("""
            set -e
            r=/var/lib/machines/bb
            mkdir -p $r/bin $r/etc $r/proc $r/sys $r/dev $r/run $r/tmp $r/usr/lib
            cp \(busybox)/busybox $r/bin/busybox
            ln -sf busybox $r/bin/sh; ln -sf busybox $r/bin/sleep
            printf 'ID=bb\\nPRETTY_NAME="Busybox test"\\n' > $r/usr/lib/os-release
            """)
    }

    /// What one manager (berthd or machined) makes of `systemd-nspawn --register=yes` run as the
    /// unit `nspawn-NAME.service` (with `--keep-unit` when asked): the machine's unit and the
    /// scope's properties while it runs, and what is left after `machinectl terminate`.
    struct Observed: Equatable, CustomStringConvertible {
        var unit = ""
        var scope = ""
        var leaderInUnit = false
        /// GetMachineByPID of the leader, and `machinectl kill --kill-whom=all` (KillUnit) of a harmless SIGCONT.
        var byPID = ""
        var killAll = ""
        var afterTerminate = ""
        var description: String {
            "unit=\(unit) leaderInUnit=\(leaderInUnit) byPID=\(byPID) killAll=\(killAll)\n\(scope)\nafter terminate: \(afterTerminate)"
        }
    }

    private static func observe(_ system: BootedSystemd, machine: String, keepUnit: Bool, run: String) throws -> (Observed, String) {
        var seen = Observed()
        var log = ""
        let service = "nspawn-\(machine)-\(run).service"
        let started = try system.shell("""
            systemd-run --unit=\(service) --property=Type=exec systemd-nspawn -q -D /var/lib/machines/bb --register=yes \
            \(keepUnit ? "--keep-unit" : "") -M \(machine) /bin/sh -c 'sleep 600'
            """)
        log += "run: \(started.stdout)\(started.stderr)\n"
        var listed = false
        for _ in 0..<150 {
            if try system.shell("machinectl list --no-legend").stdout.contains(machine) { listed = true; break }
            usleep(200_000)
        }
        guard listed else {
            log += try system.shell("journalctl --no-pager -n 60").stdout
            return (seen, log)
        }
        seen.unit = try system.shell("machinectl show \(machine) -p Unit --value").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let leader = try system.shell("machinectl show \(machine) -p Leader --value").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let cgroup = try system.shell("cat /proc/\(leader)/cgroup").stdout
        seen.leaderInUnit = !seen.unit.isEmpty && cgroup.contains("/\(seen.unit)")
        log += "leader \(leader) cgroup: \(cgroup)\n"
        seen.scope = try system.shell("""
            systemctl show \(seen.unit) -p ActiveState -p Slice -p Description -p Delegate -p CollectMode -p TasksMax -p KillSignal
            """).stdout
        seen.byPID = try system.shell("""
            busctl call org.freedesktop.machine1 /org/freedesktop/machine1 org.freedesktop.machine1.Manager GetMachineByPID u \(leader)
            """).stdout
        let killed = try system.shell("machinectl kill --kill-whom=all --signal=SIGCONT \(machine)")
        seen.killAll = killed.succeeded ? "ok" : killed.stderr
        let terminated = try system.shell("machinectl terminate \(machine)")
        log += "terminate: \(terminated.stderr)\n"
        var gone = false
        for _ in 0..<150 {
            if !(try system.shell("machinectl list --no-legend").stdout.contains(machine)) { gone = true; break }
            usleep(200_000)
        }
        let nspawnState = try system.shell("systemctl is-active \(service)").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let unitState = try system.shell("systemctl show \(seen.unit) -p ActiveState --value").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        seen.afterTerminate = "listed=\(!gone) nspawn=\(nspawnState) unit=\(unitState)"
        _ = try system.shell("systemctl stop \(service); systemctl reset-failed \(service)")
        return (seen, log)
    }

    @Test func nspawnRegistersWithBerthdWhichHasSystemdStartTheScopeAsMachinedDoes() throws {
        let busybox = try TemporaryDirectory(prefix: "berth-busybox")
        defer { busybox.remove() }
        let (system, install) = try Self.systemWithBerthdAndBusybox("berth-machines", busybox: busybox)
        defer { system.stop() }
        #expect(install.succeeded, "install: \(install.stdout)\(install.stderr)")
        let made = try Self.makeBusyboxRoot(system, busybox: busybox.path)
        #expect(made.succeeded, "\(made.stderr)")
        // nspawn registers through the system bus the container's dbus-daemon serves.
        let (berthScope, berthScopeLog) = try Self.observe(system, machine: "bb", keepUnit: false, run: "berthd")
        let (berthKept, berthKeptLog) = try Self.observe(system, machine: "bbkept", keepUnit: true, run: "berthd")
        let berthJournal = try system.shell("journalctl -u berthd --no-pager").stdout

        // berthd: the scope systemd started holds the leader, and terminate stopped it.
        #expect(berthScope.unit == "machine-bb.scope", "\(berthScope)\n\(berthScopeLog)\n\(berthJournal)")
        #expect(berthScope.leaderInUnit, "\(berthScopeLog)")
        #expect(berthScope.scope.contains("ActiveState=active") && berthScope.scope.contains("Slice=machine.slice"), "\(berthScope)")
        #expect(berthScope.byPID == "o \"/org/freedesktop/machine1/machine/bb\"\n" && berthScope.killAll == "ok", "\(berthScope)")
        #expect(berthKept.byPID == "o \"/org/freedesktop/machine1/machine/bbkept\"\n" && berthKept.killAll == "ok", "\(berthKept)")
        #expect(berthScope.afterTerminate.hasPrefix("listed=false"), "\(berthScope)\n\(berthScopeLog)")
        // --keep-unit: the machine is the registrar's own unit.
        #expect(berthKept.unit == "nspawn-bbkept-berthd.service" && berthKept.leaderInUnit, "\(berthKept)\n\(berthKeptLog)")

        // The same commands with systemd-machined 252 in berthd's place (berthd's unit removed: both
        // units claim the bus name machine1, and systemd refuses to load two such).
        let swapped = try system.shell("""
            systemctl disable --now berthd.service && rm /etc/systemd/system/berthd.service && systemctl daemon-reload \
            && systemctl start systemd-machined.service
            """)
        #expect(swapped.succeeded, "\(swapped.stderr)")
        let (machinedScope, machinedScopeLog) = try Self.observe(system, machine: "bb", keepUnit: false, run: "machined")
        let (machinedKept, machinedKeptLog) = try Self.observe(system, machine: "bbkept", keepUnit: true, run: "machined")
        #expect(machinedScope.unit == "machine-bb.scope", "machined: \(machinedScope)\n\(machinedScopeLog)")
        // The --keep-unit units differ by name only (each run its own), so compare them renamed.
        var keptRenamed = machinedKept
        keptRenamed.unit = keptRenamed.unit.replacingOccurrences(of: "-machined.service", with: "-berthd.service")
        #expect(berthScope == machinedScope, "berthd:\n\(berthScope)\nmachined 252:\n\(machinedScope)")
        #expect(berthKept == keptRenamed, "berthd:\n\(berthKept)\nmachined 252:\n\(machinedKept)\n\(machinedKeptLog)")
    }
}
