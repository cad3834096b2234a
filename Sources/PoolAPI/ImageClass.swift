/// systemd's image classes (`ImageClass` in discover-image, import1's `class` argument since
/// v256): which pool an image belongs to. The raw value is the D-Bus string.
public enum ImageClass: String, Sendable, Hashable, CaseIterable {
    /// Container and VM images: `/var/lib/machines` (machine1's pool; what 252's members mean).
    case machine
    /// Portable service images: `/var/lib/portables`.
    case portable
    /// System extension images (systemd-sysext): `/var/lib/extensions`.
    case sysext
    /// Configuration extension images (systemd-confext): `/var/lib/confexts`.
    case confext

    /// Parses import1's `class` argument; nil for anything else (importd answers InvalidArgs
    /// "Image class '…' not known"). Empty is not a class: the list methods treat `""` as "all"
    /// before they get here.
    public init?(argument: String) { self.init(rawValue: argument) }

    /// The pool folder relative to `--root`, where imports of this class land.
    public var poolFolder: String {
        switch self {
        case .machine: "var/lib/machines"
        case .portable: "var/lib/portables"
        case .sysext: "var/lib/extensions"
        case .confext: "var/lib/confexts"
        }
    }

    /// The folders searched for images of this class, relative to `--root`, first occurrence
    /// of a name wins: systemd's image search paths (discover-image.c) for the class.
    public var searchFolders: [String] {
        switch self {
        case .machine:
            ["etc/machines", "run/machines", "var/lib/machines", "var/lib/container", "usr/local/lib/machines",
             "usr/lib/machines"]
        case .portable:
            ["etc/portables", "run/portables", "var/lib/portables", "usr/local/lib/portables", "usr/lib/portables"]
        case .sysext:
            ["etc/extensions", "run/extensions", "var/lib/extensions"]
        case .confext:
            ["run/confexts", "var/lib/confexts", "usr/local/lib/confexts", "usr/lib/confexts"]
        }
    }
}

extension ImagePool.Configuration {
    /// The pool of image class `imageClass` under `root`: its search paths and pool folder;
    /// only machine images list `.host`.
    public init(class imageClass: ImageClass, root: String) {
        self.init(root: root)
        poolFolder = imageClass.poolFolder
        searchFolders = imageClass.searchFolders
        hasHostImage = imageClass == .machine
    }
}
