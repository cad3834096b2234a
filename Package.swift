// swift-tools-version:6.0
// Berth: an image-pool manager serving systemd's machine1, import1 and portable1 D-Bus APIs.
// Layers (DESIGN.md): executables → Services → Bus; Services → PoolAPI → Backends → FileTree → Linux → C modules.
import PackageDescription

let package = Package(
    name: "Berth",
    products: [
        .executable(name: "berthd", targets: ["berthd"]),
        .executable(name: "berthctl", targets: ["berthctl"]),
        .executable(name: "berth-transfer", targets: ["berth-transfer"]),
        .executable(name: "berth-inspect", targets: ["berth-inspect"]),
        .library(name: "PoolAPI", targets: ["PoolAPI"]),
        .library(name: "BackendConformance", targets: ["BackendConformance"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        // FilePath: the path type at the boundaries of FileTree, PoolAPI and the backends.
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
    ],
    targets: [
        // C libraries from Debian's -dev packages, each behind a shim header.
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd", providers: [.apt(["libsystemd-dev"])]),
        .systemLibrary(name: "CBtrfsUtil", pkgConfig: "libbtrfsutil", providers: [.apt(["libbtrfsutil-dev"])]),
        .systemLibrary(name: "CArchive", pkgConfig: "libarchive", providers: [.apt(["libarchive-dev"])]),
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        .systemLibrary(name: "CGpgme", pkgConfig: "gpgme", providers: [.apt(["libgpgme-dev"])]),
        .systemLibrary(name: "CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        // Ceph's client headers for their types only: no pkg-config, no link; Rbd dlopens the libraries.
        .systemLibrary(name: "CRbd", providers: [.apt(["librbd-dev", "librados-dev"])]),
        .systemLibrary(name: "CBlkid", pkgConfig: "blkid", providers: [.apt(["libblkid-dev"])]),
        .systemLibrary(name: "CSandbox", pkgConfig: "libseccomp", providers: [.apt(["libseccomp-dev"])]),
        // Kernel headers: ioctl numbers and structs exported as typed constants.
        .systemLibrary(name: "CLinux"),

        // Thin, typed, errno-throwing syscall layer.
        .target(name: "Linux", dependencies: ["CLinux"]),
        // librados/librbd in Swift, loaded with dlopen at first use (berthd links no Ceph library).
        .target(name: "Rbd", dependencies: ["CRbd", "Linux"]),
        // Faithful tree and file copies (ownership, modes, xattrs, ACLs, hardlinks, sparse, reflink).
        .target(name: "FileTree", dependencies: ["Linux", .product(name: "SystemPackage", package: "swift-system")]),
        // Image model, ImageBackend protocol, backend registry and the pool.
        .target(name: "PoolAPI", dependencies: ["Linux", "FileTree", .product(name: "SystemPackage", package: "swift-system")]),
        .target(name: "BtrfsBackend", dependencies: ["PoolAPI", "Linux", "FileTree", "CBtrfsUtil", .product(name: "SystemPackage", package: "swift-system")],
                path: "Sources/Backends/Btrfs"),
        .target(name: "RawLoopBackend", dependencies: ["PoolAPI", "Linux", "FileTree", "InspectProtocol", .product(name: "SystemPackage", package: "swift-system")],
                path: "Sources/Backends/RawLoop", linkerSettings: [.linkedLibrary("z")]),
        // berthd ↔ berth-inspect: the child's one-line answer, parsed strictly on berthd's side.
        .target(name: "InspectProtocol", dependencies: ["Linux"]),
        // What berth-inspect does: libblkid probing (partition tables, DPS, filesystems), the loop
        // device and the mounts, in the child's own mount namespace. berthd never links libblkid.
        .target(name: "ImageProbe", dependencies: ["InspectProtocol", "Linux", "CBlkid"]),
        .executableTarget(name: "berth-inspect", dependencies: ["ImageProbe"]),
        .target(name: "DirectoryBackend", dependencies: ["PoolAPI", "Linux", "FileTree", .product(name: "SystemPackage", package: "swift-system")],
                path: "Sources/Backends/Directory"),
        // Images as Ceph RBD images in a shared RADOS pool (libraries dlopen'ed by Rbd).
        .target(name: "RbdBackend", dependencies: ["PoolAPI", "Linux", "Rbd", .product(name: "SystemPackage", package: "swift-system")],
                path: "Sources/Backends/Rbd"),
        // Reaching an RBD image's bytes on a host: rbd-fuse mounts (+ loop via RawLoop's inspection).
        .target(name: "RbdHost", dependencies: ["PoolAPI", "Linux", .product(name: "SystemPackage", package: "swift-system")]),
        // machine1's machine registry: machines, their names, their files under /run/berth.
        .target(name: "Machines", dependencies: ["Linux", "FileTree"]),
        // portable1's logic over the portable image pool: unit files of images, attached state.
        .target(name: "Portable", dependencies: ["PoolAPI", "Linux", .product(name: "SystemPackage", package: "swift-system")]),
        // The backend conformance suite, as a library vendors call from their own tests.
        .target(name: "BackendConformance", dependencies: ["PoolAPI", "Linux", .product(name: "SystemPackage", package: "swift-system")]),

        // import1's transfer engine, berthd's side: transfers, worker processes, their status pipe.
        // No archive, HTTP or crypto library here: berthd never loads them.
        .target(name: "Transfer", dependencies: ["PoolAPI", "Linux", "CLinux", .product(name: "SystemPackage", package: "swift-system")]),
        // A process confining itself: mount view, namespaces, capabilities, seccomp (libseccomp).
        .target(name: "Sandbox", dependencies: ["Linux", "CLinux", "CSandbox"]),
        // What a transfer worker does (import, export, pull), with libarchive, libcurl, gpgme and
        // OpenSSL; run as the berth-transfer executable beside berthd.
        .target(name: "TransferJobs", dependencies: [
            "Transfer", "FileTree", "Linux", "CLinux", "RawLoopBackend", "CArchive", "CCurl", "CGpgme", "CCrypto", "CBtrfsUtil", "Sandbox",
            "Rbd", "RbdBackend", .product(name: "SystemPackage", package: "swift-system"),
        ], linkerSettings: [.linkedLibrary("z")]),  // zlib: gzip inflated and checked (ArchiveInput)
        .executableTarget(name: "berth-transfer", dependencies: ["TransferJobs"]),
        // TEST FIXTURE ONLY: a worker executable with an extra mode, a stand-in berthd for
        // TransferTests' parent-death test. Not shipped.
        .executableTarget(name: "TransferWorkerFixture", dependencies: ["Transfer", "TransferJobs", "Linux", "CLinux"]),

        // Swift layer on sd-bus.
        .target(name: "Bus", dependencies: ["CSystemd", "Linux", .product(name: "Logging", package: "swift-log")]),
        // One harness per bus API, logic in actors behind them.
        .target(name: "Services", dependencies: [
            "Bus", "PoolAPI", "Portable", "Machines", "Linux", "Transfer",
            .product(name: "Logging", package: "swift-log"), .product(name: "SystemPackage", package: "swift-system"),
        ], plugins: ["VersionFile"]),
        // BuildVersion.swift for Services from the VERSION file (BerthDaemon.version).
        .plugin(name: "VersionFile", capability: .buildTool()),
        // berthctl's commands, as a library tests can call.
        .target(name: "BerthCLI", dependencies: [
            "Bus", "Services", "PoolAPI", "Portable", .product(name: "ArgumentParser", package: "swift-argument-parser"), .product(name: "SystemPackage", package: "swift-system"),
        ]),
        .executableTarget(name: "berthd", dependencies: [
            "Services", "Bus", "Linux", "PoolAPI", "BtrfsBackend", "RawLoopBackend", "DirectoryBackend", "Transfer",
            "Rbd", "RbdBackend", "RbdHost",
            .product(name: "ArgumentParser", package: "swift-argument-parser"), .product(name: "SystemPackage", package: "swift-system"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "berthctl", dependencies: ["BerthCLI"]),
        // Benchmarks against systemd 252's daemons (scripts/bench.sh, docs/benchmarks.md).
        .executableTarget(name: "berth-bench", dependencies: [
            "Bus", "Services", "CBtrfsUtil", "CSystemd", "Linux", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // One entry function per parser of outside input, for libFuzzer (berth-fuzz, below) and
        // for FuzzReplayTests, which replays the kept corpus (docs/fuzzing.md).
        .target(name: "FuzzTargets", dependencies: [
            "RawLoopBackend", "PoolAPI", "Machines", "Portable", "Transfer", "TransferJobs", "Bus", "Services", "Linux", "CLinux",
            "InspectProtocol", "ImageProbe",
        ]),

        // Shared test helpers: private dbus-daemon, loopback filesystems, berthd under --root.
        .target(name: "TestSupport", dependencies: ["Linux"], path: "Tests/TestSupport"),
        .testTarget(name: "LinuxTests", dependencies: ["Linux", "FileTree", "TestSupport"]),
        .testTarget(name: "FileTreeTests", dependencies: ["FileTree", "Linux", "TestSupport", .product(name: "SystemPackage", package: "swift-system")]),
        .testTarget(name: "ServicesTests", dependencies: ["Services", "Bus", "PoolAPI", "Transfer", "Portable", "Linux"]),
        .testTarget(name: "PoolAPITests", dependencies: ["PoolAPI", "DirectoryBackend", "TestSupport", .product(name: "SystemPackage", package: "swift-system")]),
        .testTarget(name: "RbdHostTests", dependencies: [
            "RbdHost", "PoolAPI", "RawLoopBackend", "Linux", "TestSupport", .product(name: "SystemPackage", package: "swift-system"),
        ]),
        .testTarget(name: "PortableTests", dependencies: ["Portable", "Linux", "TestSupport"]),
        .testTarget(name: "ImageProbeTests", dependencies: ["ImageProbe", "InspectProtocol", "Linux", "TestSupport"]),
        .testTarget(name: "MachinesTests", dependencies: ["Machines", "TestSupport"]),
        .testTarget(name: "RbdTests", dependencies: [
            "Rbd", "RbdBackend", "RbdHost", "PoolAPI", "DirectoryBackend", "RawLoopBackend", "BackendConformance", "Linux",
            "TestSupport", .product(name: "SystemPackage", package: "swift-system"),
        ]),
        .testTarget(name: "BackendTests", dependencies: [
            "PoolAPI", "BtrfsBackend", "RawLoopBackend", "DirectoryBackend", "BackendConformance", "TestSupport",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        .testTarget(name: "TransferTests", dependencies: [
            "Transfer", "TransferJobs", "TransferWorkerFixture", "PoolAPI", "Linux", "BtrfsBackend", "RawLoopBackend",
            "DirectoryBackend", "TestSupport", "Sandbox", .product(name: "SystemPackage", package: "swift-system"),
        ]),
        .testTarget(name: "BusTests", dependencies: ["Bus", "TestSupport"]),
        .testTarget(name: "BerthCLITests", dependencies: ["BerthCLI", "Bus", "Linux", "TestSupport"]),
        .testTarget(name: "EndToEndTests", dependencies: ["TestSupport", "Bus", "Services", "Linux"]),
        .testTarget(name: "FuzzReplayTests", dependencies: ["FuzzTargets", "PoolAPI", "Linux", "TransferJobs"]),
    ]
)

// The libFuzzer executable and its declaration of libFuzzer's driver: they link only with
// `-sanitize=fuzzer`, so they are declared only for scripts/fuzz.sh (BERTH_FUZZ=1), never in
// a normal build or CI's.
if Context.environment["BERTH_FUZZ"] == "1" {
    package.targets += [
        .systemLibrary(name: "CFuzzer"),
        .executableTarget(name: "berth-fuzz", dependencies: ["FuzzTargets", "CFuzzer"]),
    ]
}
