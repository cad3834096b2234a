import Foundation
import Testing
import TestSupport

/// berthd installed by dist/install.sh into a real systemd 252 (a booted Debian 12 container) as
/// the system's machine1, import1 and portable1: the unit, its Type=notify start and clean stop,
/// the bus policies, bus activation through the unit's aliases, and the real machinectl inside.
@Suite(.serialized, .requires(.bootedSystemd))
struct BootedSystemdTests {
    /// A booted system `name` with this build installed by dist/install.sh (the repository and the
    /// build folder bind-mounted read-only) and berthd.service enabled and started.
    static func systemWithBerthd(_ name: String) throws -> (BootedSystemd, CommandResult) {
        let repo = BootedSystemd.packageRoot().path
        let bin = URL(fileURLWithPath: try BerthdProcess.binaryPath("berthd")).deletingLastPathComponent().path
        let system = try BootedSystemd(name: name, readOnlyBinds: [repo, bin])
        let install = try system.shell("cd '\(repo)' && dist/install.sh --bin '\(bin)' && systemctl enable --now berthd.service")
        return (system, install)
    }

    @Test func distInstallsBerthdAsTheSystemsImageServices() throws {
        let (system, enable) = try Self.systemWithBerthd("berth-dist")
        defer { system.stop() }
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

    @Test func anAttachedPortableServiceRunsChrootedInItsImage() throws {
        let (system, install) = try Self.systemWithBerthd("berth-portable")
        defer { system.stop() }
        #expect(install.succeeded, "install: \(install.stdout)\(install.stderr)")

        // A portable image with just enough to run: sleep and the C library it links, taken
        // from the container's own /usr, and a service that sleeps.
        let made = try system.shell("""
            set -e
            img=/var/lib/portables/demo_1.0
            mkdir -p $img/usr/bin $img/usr/lib/systemd/system $img/etc
            for f in /usr/bin/sleep $(ldd /usr/bin/sleep | grep -o '/[^ ]*'); do mkdir -p $img$(dirname $f); cp -L $f $img$f; done
            ln -s usr/lib $img/lib; ln -s usr/lib64 $img/lib64 2>/dev/null || true
            printf 'ID=demo\nPORTABLE_PREFIXES=demo\n' > $img/usr/lib/os-release
            printf '[Unit]\nDescription=Demo\n[Service]\nExecStart=/usr/bin/sleep infinity\n' > $img/usr/lib/systemd/system/demo.service
            """)
        #expect(made.succeeded, "image: \(made.stderr)")

        let attached = try system.shell("portablectl attach --now --profile=trusted demo_1.0")
        let journal = try system.shell("journalctl -u demo -u berthd --no-pager").stdout
        #expect(attached.succeeded, "attach: \(attached.stdout)\(attached.stderr)\n\(journal)")
        #expect(try system.shell("systemctl is-active demo.service").stdout == "active\n")
        let pid = try system.shell("systemctl show -p MainPID --value demo.service").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        // Its root is the image (readlink of /proc/PID/root says "/" across mount namespaces, so
        // look through it): the image's os-release, and none of the container's /usr.
        #expect(try system.shell("cat /proc/\(pid)/root/usr/lib/os-release").stdout.hasPrefix("ID=demo\n"))
        #expect(!(try system.shell("test -e /proc/\(pid)/root/usr/bin/systemctl")).succeeded)
        #expect(try system.shell("portablectl is-attached demo_1.0").stdout == "running\n")
        #expect(try system.shell("portablectl list --no-legend").stdout.contains("running"))
        // berthd refuses to detach a running unit without --now.
        let busy = try system.shell("portablectl detach demo_1.0")
        #expect(!busy.succeeded && busy.stderr.contains("is active"), "\(busy.stderr)")

        // reattach --now restarts the service from the image as it is now.
        let reattached = try system.shell("portablectl reattach --now --profile=trusted demo_1.0")
        #expect(reattached.succeeded, "reattach: \(reattached.stdout)\(reattached.stderr)")
        let newPID = try system.shell("systemctl show -p MainPID --value demo.service").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(newPID != pid && newPID != "0", "not restarted: \(pid) → \(newPID)")
        #expect(try system.shell("systemctl is-active demo.service").stdout == "active\n")

        // detach --now stops the service and removes its files.
        let detached = try system.shell("portablectl detach --now demo_1.0")
        #expect(detached.succeeded, "detach: \(detached.stdout)\(detached.stderr)")
        #expect(try system.shell("systemctl is-active demo.service").stdout != "active\n")
        #expect(!(try system.shell("test -e /etc/systemd/system.attached/demo.service")).succeeded)
        #expect(try system.shell("portablectl is-attached demo_1.0").stdout == "detached\n")
    }
}
