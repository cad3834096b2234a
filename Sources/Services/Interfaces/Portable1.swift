import Bus

// The org.freedesktop.portable1 interfaces exactly as systemd 252 introspects them (Tests/Fixtures/spec/systemd252-*.xml):
// member names, signatures, argument names, property change annotations, and which methods
// sd-bus itself restricts to root ("privileged"). Written from the fixture once; the services,
// berthd and the tests refer to members only through these enums.

/// `org.freedesktop.portable1.Manager`: the portable1 manager object `/org/freedesktop/portable1`.
public enum Portable1Manager {
    /// The interface name, `org.freedesktop.portable1.Manager`.
    public static let name = "org.freedesktop.portable1.Manager"

    /// The methods of `org.freedesktop.portable1.Manager`, each raw value the D-Bus member name.
    public enum Method: String, CaseIterable, Sendable {
        case getImage = "GetImage"
        case listImages = "ListImages"
        case getImageOSRelease = "GetImageOSRelease"
        case getImageMetadata = "GetImageMetadata"
        case getImageMetadataWithExtensions = "GetImageMetadataWithExtensions"
        case getImageState = "GetImageState"
        case getImageStateWithExtensions = "GetImageStateWithExtensions"
        case attachImage = "AttachImage"
        case attachImageWithExtensions = "AttachImageWithExtensions"
        case detachImage = "DetachImage"
        case detachImageWithExtensions = "DetachImageWithExtensions"
        case reattachImage = "ReattachImage"
        case reattachImageWithExtensions = "ReattachImageWithExtensions"
        case removeImage = "RemoveImage"
        case markImageReadOnly = "MarkImageReadOnly"
        case setImageLimit = "SetImageLimit"
        case setPoolLimit = "SetPoolLimit"
    }

    /// The properties of `org.freedesktop.portable1.Manager`, each raw value the D-Bus member name.
    public enum Property: String, CaseIterable, Sendable {
        case poolPath = "PoolPath"
        case poolUsage = "PoolUsage"
        case poolLimit = "PoolLimit"
        case profiles = "Profiles"
    }

    /// The whole interface as introspected from systemd 252.
    public static let interface = BusInterface(
        name: name,
        methods: [
            .init(Method.getImage, in: [("s", "image")], out: [("o", "object")]),
            .init(Method.listImages, out: [("a(ssbtttso)", "images")]),
            .init(Method.getImageOSRelease, in: [("s", "image")], out: [("a{ss}", "os_release")]),
            .init(Method.getImageMetadata, in: [("s", "image"), ("as", "matches")], out: [("s", "image"), ("ay", "os_release"), ("a{say}", "units")]),
            .init(Method.getImageMetadataWithExtensions, in: [("s", "image"), ("as", "extensions"), ("as", "matches"), ("t", "flags")], out: [("s", "image"), ("ay", "os_release"), ("a{say}", "extensions"), ("a{say}", "units")]),
            .init(Method.getImageState, in: [("s", "image")], out: [("s", "state")]),
            .init(Method.getImageStateWithExtensions, in: [("s", "image"), ("as", "extensions"), ("t", "flags")], out: [("s", "state")]),
            .init(Method.attachImage, in: [("s", "image"), ("as", "matches"), ("s", "profile"), ("b", "runtime"), ("s", "copy_mode")], out: [("a(sss)", "changes")]),
            .init(Method.attachImageWithExtensions, in: [("s", "image"), ("as", "extensions"), ("as", "matches"), ("s", "profile"), ("s", "copy_mode"), ("t", "flags")], out: [("a(sss)", "changes")]),
            .init(Method.detachImage, in: [("s", "image"), ("b", "runtime")], out: [("a(sss)", "changes")]),
            .init(Method.detachImageWithExtensions, in: [("s", "image"), ("as", "extensions"), ("t", "flags")], out: [("a(sss)", "changes")]),
            .init(Method.reattachImage, in: [("s", "image"), ("as", "matches"), ("s", "profile"), ("b", "runtime"), ("s", "copy_mode")], out: [("a(sss)", "changes_removed"), ("a(sss)", "changes_updated")]),
            .init(Method.reattachImageWithExtensions, in: [("s", "image"), ("as", "extensions"), ("as", "matches"), ("s", "profile"), ("s", "copy_mode"), ("t", "flags")], out: [("a(sss)", "changes_removed"), ("a(sss)", "changes_updated")]),
            .init(Method.removeImage, in: [("s", "image")]),
            .init(Method.markImageReadOnly, in: [("s", "image"), ("b", "read_only")]),
            .init(Method.setImageLimit, in: [("s", "image"), ("t", "limit")]),
            .init(Method.setPoolLimit, in: [("t", "limit")]),
        ],
        properties: [
            .init(Property.poolPath, "s", emitsChange: .false),
            .init(Property.poolUsage, "t", emitsChange: .false),
            .init(Property.poolLimit, "t", emitsChange: .false),
            .init(Property.profiles, "as", emitsChange: .false),
        ],
        signals: [
        ]
    )
}

/// `org.freedesktop.portable1.Image`: one object per portable image under `/org/freedesktop/portable1/image/`.
public enum Portable1Image {
    /// The interface name, `org.freedesktop.portable1.Image`.
    public static let name = "org.freedesktop.portable1.Image"

    /// The methods of `org.freedesktop.portable1.Image`, each raw value the D-Bus member name.
    public enum Method: String, CaseIterable, Sendable {
        case getOSRelease = "GetOSRelease"
        case getMetadata = "GetMetadata"
        case getMetadataWithExtensions = "GetMetadataWithExtensions"
        case getState = "GetState"
        case getStateWithExtensions = "GetStateWithExtensions"
        case attach = "Attach"
        case attachWithExtensions = "AttachWithExtensions"
        case detach = "Detach"
        case detachWithExtensions = "DetachWithExtensions"
        case reattach = "Reattach"
        case reattacheWithExtensions = "ReattacheWithExtensions"
        /// systemd 254 fixed the spelling; both are served so portablectl of either generation works.
        case reattachWithExtensions = "ReattachWithExtensions"
        case remove = "Remove"
        case markReadOnly = "MarkReadOnly"
        case setLimit = "SetLimit"
    }

    /// The properties of `org.freedesktop.portable1.Image`, each raw value the D-Bus member name.
    public enum Property: String, CaseIterable, Sendable {
        case name = "Name"
        case path = "Path"
        case type = "Type"
        case readOnly = "ReadOnly"
        case creationTimestamp = "CreationTimestamp"
        case modificationTimestamp = "ModificationTimestamp"
        case usage = "Usage"
        case limit = "Limit"
        case usageExclusive = "UsageExclusive"
        case limitExclusive = "LimitExclusive"
    }

    /// The whole interface as introspected from systemd 252.
    public static let interface = BusInterface(
        name: name,
        methods: [
            .init(Method.getOSRelease, out: [("a{ss}", "os_release")]),
            .init(Method.getMetadata, in: [("as", "matches")], out: [("s", "image"), ("ay", "os_release"), ("a{say}", "units")]),
            .init(Method.getMetadataWithExtensions, in: [("as", "extensions"), ("as", "matches"), ("t", "flags")], out: [("s", "image"), ("ay", "os_release"), ("a{say}", "extensions"), ("a{say}", "units")]),
            .init(Method.getState, out: [("s", "state")]),
            .init(Method.getStateWithExtensions, in: [("as", "extensions"), ("t", "flags")], out: [("s", "state")]),
            .init(Method.attach, in: [("as", "matches"), ("s", "profile"), ("b", "runtime"), ("s", "copy_mode")], out: [("a(sss)", "changes")]),
            .init(Method.attachWithExtensions, in: [("as", "extensions"), ("as", "matches"), ("s", "profile"), ("s", "copy_mode"), ("t", "flags")], out: [("a(sss)", "changes")]),
            .init(Method.detach, in: [("b", "runtime")], out: [("a(sss)", "changes")]),
            .init(Method.detachWithExtensions, in: [("as", "extensions"), ("t", "flags")], out: [("a(sss)", "changes")]),
            .init(Method.reattach, in: [("as", "matches"), ("s", "profile"), ("b", "runtime"), ("s", "copy_mode")], out: [("a(sss)", "changes_removed"), ("a(sss)", "changes_updated")]),
            .init(Method.reattacheWithExtensions, in: [("as", "extensions"), ("as", "matches"), ("s", "profile"), ("s", "copy_mode"), ("t", "flags")], out: [("a(sss)", "changes_removed"), ("a(sss)", "changes_updated")]),
            // Not in 252: the v254+ spelling, with the same arguments.
            .init(Method.reattachWithExtensions, in: [("as", "extensions"), ("as", "matches"), ("s", "profile"), ("s", "copy_mode"), ("t", "flags")], out: [("a(sss)", "changes_removed"), ("a(sss)", "changes_updated")]),
            .init(Method.remove),
            .init(Method.markReadOnly, in: [("b", "read_only")]),
            .init(Method.setLimit, in: [("t", "limit")]),
        ],
        properties: [
            .init(Property.name, "s", emitsChange: .false),
            .init(Property.path, "s", emitsChange: .false),
            .init(Property.type, "s", emitsChange: .false),
            .init(Property.readOnly, "b", emitsChange: .false),
            .init(Property.creationTimestamp, "t", emitsChange: .false),
            .init(Property.modificationTimestamp, "t", emitsChange: .false),
            .init(Property.usage, "t", emitsChange: .false),
            .init(Property.limit, "t", emitsChange: .false),
            .init(Property.usageExclusive, "t", emitsChange: .false),
            .init(Property.limitExclusive, "t", emitsChange: .false),
        ],
        signals: [
        ]
    )
}

/// The `flags` argument of portable1's …WithExtensions members (sd-bus's SD_SYSTEMD_PORTABLE_*
/// in systemd 252's portable.h), for berthd and its clients alike.
public enum Portable1Flags {
    /// Attach below `/run` for this boot only (`portablectl --runtime`).
    public static let runtime: UInt64 = 1 << 0
    /// Attach or detach even when the units are running or exist already (`portablectl --force`).
    public static let forceAttach: UInt64 = 1 << 1
    /// Skip the extension-release checks (`portablectl --force` with `--extension`).
    public static let forceExtension: UInt64 = 1 << 2
    /// Every flag systemd 252 knows.
    public static let all = runtime | forceAttach | forceExtension
}
