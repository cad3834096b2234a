/// The kinds of image, by the type strings systemd uses on the bus (`Image.Type`, ListImages).
public enum ImageType: String, Sendable, Hashable, CaseIterable {
    case directory
    case subvolume
    case raw
    case block
}

/// One image of the pool, as `org.freedesktop.machine1.Image` describes it.
public struct Image: Sendable, Hashable {
    /// Sentinel for an unknown usage or limit, as systemd reports it (`UINT64_MAX`).
    public static let unknown = UInt64.max

    /// The image name (`.host` for the host's root).
    public var name: String
    /// The real path of the image's entry (a directory, subvolume or `NAME.raw` file).
    public var path: String
    public var type: ImageType
    public var readOnly: Bool
    /// Birth time in µs since the epoch; 0 where the filesystem does not know it.
    public var creationTimestamp: UInt64
    /// Modification time in µs since the epoch; 0 where unknown.
    public var modificationTimestamp: UInt64
    public var usage: UInt64
    public var usageExclusive: UInt64
    public var limit: UInt64
    public var limitExclusive: UInt64

    public init(
        name: String, path: String, type: ImageType, readOnly: Bool,
        creationTimestamp: UInt64 = 0, modificationTimestamp: UInt64 = 0,
        usage: UInt64 = Image.unknown, usageExclusive: UInt64 = Image.unknown,
        limit: UInt64 = Image.unknown, limitExclusive: UInt64 = Image.unknown
    ) {
        self.name = name
        self.path = path
        self.type = type
        self.readOnly = readOnly
        self.creationTimestamp = creationTimestamp
        self.modificationTimestamp = modificationTimestamp
        self.usage = usage
        self.usageExclusive = usageExclusive
        self.limit = limit
        self.limitExclusive = limitExclusive
    }

    /// A hidden image's name starts with a dot (machinectl hides it unless `--all`).
    public var isHidden: Bool { name.hasPrefix(".") }
}
