/// The partition types of the Discoverable Partitions Specification (uapi-group) that hold an
/// OS tree: the root and /usr partitions of each architecture.
public enum DiscoverablePartitions {
    public struct Architecture: Sendable {
        /// The DPS architecture name.
        public let name: String
        /// Its root and /usr partition type GUIDs, lower case.
        public let root: String
        public let usr: String
    }

    /// Every architecture the DPS names.
    public static let architectures: [Architecture] = [
        .init(name: "x86-64", root: "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", usr: "8484680c-9521-48c6-9c11-b0720656f69e"),
        .init(name: "x86", root: "44479540-f297-41b2-9af7-d131d5f0458a", usr: "75250d76-8cc6-458e-bd66-bd47cc81a812"),
        .init(name: "arm64", root: "b921b045-1df0-41c3-af44-4c6f280d3fae", usr: "b0e01050-ee5f-4390-949a-9101b17104e9"),
        .init(name: "arm", root: "69dad710-2ce4-4e3c-b16c-21a1d49abed3", usr: "7d0359a3-02b3-4f0a-865c-654403e70625"),
        .init(name: "riscv64", root: "72ec70a6-cf74-40e6-bd49-4bda08e8f224", usr: "beaec34b-8442-439b-a40b-984381ed097d"),
        .init(name: "riscv32", root: "60d5a7fe-8e7d-435c-b714-3dd8162144e1", usr: "b933fb22-5c3f-4f91-af90-e2bb0fa50702"),
        .init(name: "loongarch64", root: "77055800-792c-4f94-b39a-98c91b762bb6", usr: "e611c702-575c-4cbe-9a46-434fa0bf7e3f"),
        .init(name: "ppc64-le", root: "c31c45e6-3f39-412e-80fb-4809c4980599", usr: "15bb03af-77e7-4d4a-b12b-c0d084f7491c"),
        .init(name: "ppc64", root: "912ade1d-a839-4913-8964-a10eee08fbd2", usr: "2c9739e2-f068-46b3-9fd0-01c5a9afbcca"),
        .init(name: "ppc", root: "1de3f1ef-fa98-47b5-8dcd-4a860a654d78", usr: "7d14fec5-cc71-415d-9d6c-06bf0b3c3eaf"),
        .init(name: "s390x", root: "5eead9a9-fe09-4a1e-a1d7-520d00531306", usr: "8a4f5770-50aa-4ed3-874a-99b710db6fea"),
        .init(name: "s390", root: "08a7acea-624c-4a20-91e8-6e0fa67d23f9", usr: "cd0f869b-d0fb-4ca0-b141-9ea87cc78d66"),
        .init(name: "ia64", root: "993d8d3d-f80e-4225-855a-9daf8ed7ea97", usr: "4301d2a6-4e3b-4b2a-bb94-9e0b2c4225ea"),
        .init(name: "mips64-le", root: "700bda43-7a34-4507-b179-eeb93d7a7ca3", usr: "c97c1f32-ba06-40b4-9f22-236061b08aa8"),
        .init(name: "mips-le", root: "37c58c8a-d913-4156-a25f-48b1b64e07f0", usr: "0f4868e9-9952-4706-979f-3ed3a473e947"),
        .init(name: "parisc", root: "1aacdb3b-5444-4138-bd9e-e5c2239b2346", usr: "dc4a4480-6917-4262-a4ec-db9384949f25"),
        .init(name: "alpha", root: "6523f8ae-3eb1-4e2a-a05a-18b695ae656f", usr: "e18cf08c-33ec-4c0d-8246-c6c6fb3da024"),
        .init(name: "arc", root: "d27f46ed-2919-4cb8-bd25-9531f3c16534", usr: "7978a683-6316-4922-bbee-38bff5a2fecc"),
        .init(name: "m68k", root: "0cf191c8-3b54-433a-b715-68c6fa4086de", usr: "a639b810-a02d-44bc-b579-d23e7bffdede"),
        .init(name: "sparc64", root: "f7b4d167-1e51-42a9-8151-ec96c2e99478", usr: "db8ce399-787c-460a-80e3-69104c1ce375"),
        .init(name: "sh4", root: "7b8f86b1-397a-4e1c-9eb0-850983baedc4", usr: "0b6d8f08-1548-4183-a6fa-22fe95bc5422"),
        .init(name: "tilegx", root: "c50cdd70-3862-4cc3-90e1-809a8c93ee2c", usr: "55497029-c7c1-44cc-aa39-815ed1558630"),
    ]

    /// The "Linux filesystem data" type, which predates the DPS. systemd takes a disk's only such
    /// partition as its root when there is no DPS root; so does Berth.
    public static let genericLinux = "0fc63daf-8483-4772-8e79-3d69d8477de4"

    /// The host's architecture first (and its 32-bit sibling), then all others: an image is
    /// only read here, never run, so a foreign architecture's root is still worth inspecting.
    public static var preferenceOrder: [Architecture] {
        #if arch(x86_64)
        let native = ["x86-64", "x86"]
        #elseif arch(arm64)
        let native = ["arm64", "arm"]
        #elseif arch(riscv64)
        let native = ["riscv64"]
        #else
        let native: [String] = []
        #endif
        let first = native.compactMap { n in architectures.first { $0.name == n } }
        return first + architectures.filter { !native.contains($0.name) }
    }

    /// The partitions to mount for inspection: a root and/or a /usr partition of one
    /// architecture, skipping those flagged no-auto.
    public static func select(from partitions: [ProbedPartition]) -> (root: ProbedPartition?, usr: ProbedPartition?) {
        let usable = partitions.filter { !$0.noAuto }
        for arch in preferenceOrder {
            let root = usable.first { $0.type == arch.root }
            let usr = usable.first { $0.type == arch.usr }
            if root != nil || usr != nil { return (root, usr) }
        }
        let generic = usable.filter { $0.type == genericLinux }
        if generic.count == 1 { return (generic[0], nil) }
        return (nil, nil)
    }
}
