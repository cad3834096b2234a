import Foundation
import Testing
import TestSupport

/// berthd installed by dist/install.sh into a real systemd 252 (a booted Debian 12 container) as
/// the system's machine1, import1 and portable1: the unit, its Type=notify start and clean stop,
/// the bus policies, bus activation through the unit's aliases, and the real machinectl inside.
@Suite(.serialized, .enabled(if: BootedSystemd.skipReason == nil || Privileges.underCI,
                             Comment(rawValue: BootedSystemd.skipReason ?? "")))
struct BootedSystemdTests {
    @Test func distInstallsBerthdAsTheSystemsImageServices() throws {
        let repo = BootedSystemd.packageRoot().path
        let bin = URL(fileURLWithPath: try BerthdProcess.binaryPath("berthd")).deletingLastPathComponent().path
        let system = try BootedSystemd(name: "berth-dist", readOnlyBinds: [repo, bin])
        defer { system.stop() }

        let install = try system.shell("cd '\(repo)' && dist/install.sh --bin '\(bin)'")
        #expect(install.succeeded, "install.sh: \(install.stdout)\(install.stderr)")

        let enable = try system.shell("systemctl enable --now berthd.service")
        #expect(enable.succeeded, "enable: \(enable.stderr)")
        // Type=notify: active only once berthd said READY=1, with its own pid as the main one.
        let shown = try system.shell("systemctl show -p ActiveState -p SubState -p Type -p MainPID berthd.service").stdout
        let journal = try system.shell("journalctl -u berthd --no-pager").stdout
        #expect(shown.contains("ActiveState=active"), "\(shown)\n\(journal)")
        #expect(shown.contains("Type=notify"))
        #expect(!shown.contains("MainPID=0"))
        let owners = try system.shell("busctl list --acquired --no-legend --no-pager").stdout
        for name in ["org.freedesktop.machine1", "org.freedesktop.import1", "org.freedesktop.portable1"] {
            #expect(owners.contains(name), "\(name) not owned: \(owners)")
        }

        // The real machinectl on the system bus, over the container's own /var/lib/machines.
        let made = try system.shell("""
            mkdir -p /var/lib/machines/demo/etc && printf 'ID=demo\\nPRETTY_NAME=\"Demo\"\\n' > /var/lib/machines/demo/etc/os-release \
            && machinectl clone demo demo2 && machinectl read-only demo2 && machinectl list-images --no-legend
            """)
        #expect(made.succeeded, "machinectl: \(made.stderr)")
        #expect(made.stdout.contains("demo2"))
        let release = try system.shell("machinectl image-status demo2 --no-pager").stdout
        #expect(release.contains("Demo"), "image-status: \(release)")

        // The system bus's policy lets a user read the pool and keeps mutations for root.
        let listedAsNobody = try system.shell("setpriv --reuid=nobody --regid=nogroup --clear-groups machinectl list-images --no-legend")
        #expect(listedAsNobody.succeeded && listedAsNobody.stdout.contains("demo2"), "\(listedAsNobody.stderr)")
        let removedAsNobody = try system.shell("setpriv --reuid=nobody --regid=nogroup --clear-groups machinectl remove demo2")
        #expect(!removedAsNobody.succeeded)
        #expect(try system.shell("test -d /var/lib/machines/demo2").succeeded)

        // SIGTERM from systemctl stop: berthd exits 0 and gives its names back.
        let stop = try system.shell("systemctl stop berthd.service && systemctl show -p Result -p ExecMainStatus berthd.service")
        #expect(stop.stdout.contains("Result=success") && stop.stdout.contains("ExecMainStatus=0"), "stop: \(stop.stdout)\(stop.stderr)")

        // Bus activation: a call to import1 while nothing owns it starts berthd.service (not importd).
        let activated = try system.shell("""
            busctl call org.freedesktop.import1 /org/freedesktop/import1 org.freedesktop.import1.Manager ListTransfers \
            && systemctl is-active berthd.service && systemctl is-active systemd-importd.service
            """)
        #expect(activated.stdout.contains("a(usssdo) 0"), "activation: \(activated.stdout)\(activated.stderr)")
        #expect(activated.stdout.split(separator: "\n").dropFirst().first == "active", "berthd not activated: \(activated.stdout)")
        #expect(activated.stdout.hasSuffix("inactive\n"), "importd started instead: \(activated.stdout)")
    }
}
