import ArgumentParser
import Bus
import Foundation
import Glibc
import PoolAPI
import Portable
import Services

// berthctl's portable verbs, portablectl's list, inspect, attach, detach, reattach, is-attached,
// read-only, set-limit and remove over org.freedesktop.portable1, as `berthctl portable VERB`
// (the machine1 verbs own the plain names). Each sends what portablectl 252 sends (measured with
// dbus-monitor beside the real portablectl) and prints what it prints, except that berthctl never
// talks to systemd: no reload, no enable, no start or stop.

/// `berthctl portable`: the portable service images of org.freedesktop.portable1.
public struct PortableCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "portable",
        abstract: "Attach, detach and inspect portable service images (org.freedesktop.portable1).",
        discussion: """
            The verbs of portablectl, as a client of berthd's portable1. berthctl only asks berthd to \
            write or remove the unit files: it does not reload systemd, enable, start or stop any unit \
            (as `portablectl --no-reload` without --enable or --now). After attach or reattach run \
            `systemctl daemon-reload` and start the units yourself; stop them before detach.
            """,
        subcommands: [List.self, Inspect.self, Attach.self, Detach.self, Reattach.self, IsAttached.self, ReadOnly.self,
                      SetLimit.self, Remove.self])

    public init() {}
}

/// A portable1 connection for berthctl's portable verbs: calls `org.freedesktop.portable1.Manager`,
/// turning error replies into berthctl failures.
struct Portable1Client {
    let client: BusClient

    init(_ global: GlobalOptions) throws {
        client = try connectBus(global)
    }

    /// Calls Manager method `method` with `arguments`; no timeout, as attaching or removing a big
    /// image takes its time.
    @discardableResult
    func manager(_ method: Portable1Manager.Method, _ arguments: [BusValue] = []) throws -> [BusValue] {
        do {
            return try client.call(destination: ServiceKind.portable1.busName, path: ServiceKind.portable1.managerPath,
                                   interface: Portable1Manager.name, member: method.rawValue, arguments,
                                   timeoutMicroseconds: UInt64.max)
        } catch {
            throw CLIError(error)
        }
    }
}

/// How the portable verbs name an image and pick its units, as portablectl does on its side.
enum PortableArguments {
    /// An image name is sent as it is; anything else is a path, made absolute and free of symlinks
    /// here (portablectl's determine_image), so it does not depend on berthctl's working folder.
    /// `mayBeMissing` for the verbs that work on an image gone from disk (detach, is-attached).
    static func image(_ argument: String, mayBeMissing: Bool = false) throws -> String {
        if (try? ImagePool.validateName(argument)) != nil { return argument }
        if let resolved = realpath(argument, nil) {
            defer { free(resolved) }
            return String(cString: resolved)
        }
        guard mayBeMissing else {
            throw CLIError("Cannot normalize specified image path '\(argument)': \(String(cString: strerror(errno)))")
        }
        return URL(fileURLWithPath: argument).standardizedFileURL.path
    }

    /// The unit matches to send. None given: the image's name up to its first `_` (or without
    /// `.raw`), whatever the image's PORTABLE_PREFIXES say, as portablectl 252 sends it; `-` alone:
    /// every unit (the empty list), where `allowAll`. Says on stderr what it picked, as portablectl.
    static func matches(image argument: String, _ given: [String], allowAll: Bool) throws -> [String] {
        if given.isEmpty {
            let prefix = try self.prefix(of: argument)
            note("(Matching unit files with prefix '\(prefix)'.)")
            return [prefix]
        }
        if given == ["-"] {
            guard allowAll else { throw CLIError("Refusing all unit file match.") }
            note("(Matching all unit files.)")
            return []
        }
        note("(Matching unit files with prefixes '\(given.joined(separator: "', '"))'.)")
        return given
    }

    /// portablectl's extract_prefix: the file name up to its first `_`, else without `.raw`; only
    /// letters, digits, `-` and `.`.
    static func prefix(of argument: String) throws -> String {
        let base = (argument as NSString).lastPathComponent
        var prefix = base.split(separator: "_", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? base
        if !base.contains("_"), prefix.hasSuffix(".raw") { prefix.removeLast(4) }
        let allowed = prefix.unicodeScalars.allSatisfy {
            $0.isASCII && (CharacterSet.alphanumerics.contains($0) || $0 == "-" || $0 == ".")
        }
        guard allowed, !prefix.isEmpty, prefix != ".", prefix != "..", prefix.utf8.count <= 255 else {
            throw CLIError("Failed to extract prefix of image name '\(argument)': Invalid argument")
        }
        return prefix
    }

    /// An informational line on stderr, where portablectl logs it.
    static func note(_ line: String) {
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }
}

/// One change attach, detach or reattach made (an `(sss)` of their replies).
public struct PortableChangeRow: Codable, Sendable, Equatable {
    /// `mkdir`, `write`, `copy`, `symlink` or `unlink`.
    public var type: String
    /// What was made or removed.
    public var path: String
    /// What a copy or symlink was made from; "" otherwise.
    public var source: String

    /// The changes of an `a(sss)` reply value.
    static func list(_ value: BusValue?) -> [PortableChangeRow] {
        (value?.arrayValue ?? []).compactMap {
            guard let f = $0.structureValue, f.count == 3, let type = f[0].stringValue, let path = f[1].stringValue,
                  let source = f[2].stringValue else { return nil }
            return PortableChangeRow(type: type, path: path, source: source)
        }
    }

    /// The change in portablectl's words.
    var line: String {
        switch PortableChange.Kind(rawValue: type) {
        case .symlink: "Created symlink \(path) → \(source)."
        case .copy: source.isEmpty ? "Copied \(path)." : "Copied \(source) → \(path)."
        case .unlink: "Removed \(path)."
        case .write: "Written \(path)."
        case .mkdir: "Created directory \(path)."
        case nil: "Unexpected change: \(type)/\(path)/\(source)"
        }
    }
}

/// What attach, reattach and detach take besides the image.
public struct PortableScopeOptions: ParsableArguments {
    @Flag(help: "Attach below /run, until the next boot (detach: the units attached so).")
    public var runtime = false

    @Flag(help: "Skip the check that the image's units are not running (portablectl's --force).")
    public var force = false

    @Option(name: .customLong("extension"), help: "An extension image to overlay on the image's /usr (repeatable).")
    public var extensions: [String] = []

    public init() {}

    /// portablectl's choice: the …WithExtensions member when there are extensions or --force, with
    /// PORTABLE_FORCE_ATTACH and PORTABLE_FORCE_SYSEXT for --force, as portablectl 252 sends them.
    var withExtensions: Bool { !extensions.isEmpty || force }
    /// The `flags` argument of the …WithExtensions members.
    var flags: UInt64 {
        (runtime ? Portable1Flags.runtime : 0) | (force ? Portable1Flags.forceAttach | Portable1Flags.forceExtension : 0)
    }

    /// The extensions as sent: names as they are, paths made absolute.
    func resolvedExtensions() throws -> [String] { try extensions.map { try PortableArguments.image($0) } }
}

/// What attach and reattach take on top of `PortableScopeOptions`.
public struct PortableAttachOptions: ParsableArguments {
    @Option(name: .shortAndLong, help: "The security profile: default, nonetwork, strict, trusted or one of your own.")
    public var profile = "default"

    @Option(help: "copy, symlink, mixed, or auto: unit files copied, the profile linked.")
    public var copy = "auto"

    public init() {}

    /// Refuses a copy mode berthd does not know before anything is sent.
    public func validate() throws {
        if copy != "auto" && (PortableCopyMode(rawValue: copy) ?? .standard) == .standard {
            throw ValidationError("--copy must be copy, symlink, mixed or auto, not '\(copy)'")
        }
    }

    /// The `copy_mode` argument: `""` for auto (checked by `validate`).
    var copyMode: String { copy == "auto" ? PortableCopyMode.standard.rawValue : copy }

    /// AttachImage or ReattachImage (`plain`), or their …WithExtensions forms (`withExtensions`)
    /// when `scope` asks for them, with the arguments both take, in each form's order.
    func call(_ plain: Portable1Manager.Method, _ withExtensions: Portable1Manager.Method, image: String, matches: [String],
              scope: PortableScopeOptions) throws -> (Portable1Manager.Method, [BusValue]) {
        if scope.withExtensions {
            return (withExtensions, [.string(image), .strings(try scope.resolvedExtensions()), .strings(matches), .string(profile),
                                     .string(copyMode), .uint64(scope.flags)])
        }
        return (plain, [.string(image), .strings(matches), .string(profile), .boolean(scope.runtime), .string(copyMode)])
    }
}

/// Prints changes as portablectl does.
private func printChanges(_ changes: [PortableChangeRow]) {
    for change in changes { print(change.line) }
}

extension PortableCommand {
    /// `berthctl portable list`: ListImages as portablectl's table, or JSON.
    public struct List: ParsableCommand {
        public static let configuration = CommandConfiguration(abstract: "List the portable service images and their state.")
        @OptionGroup public var global: GlobalOptions
        public init() {}

        public func run() throws {
            try reporting {
                let reply = try Portable1Client(global).manager(.listImages)
                let rows = (reply.first?.arrayValue ?? []).compactMap(ImageRow.init(listEntry:)).sorted { $0.name < $1.name }
                if global.json {
                    print(try jsonLine(rows))
                    return
                }
                if rows.isEmpty {
                    print("No images.")
                    return
                }
                printTable([["NAME", "TYPE", "RO", "CRTIME", "MTIME", "USAGE", "STATE"]] + rows.map {
                    [$0.name, $0.type, $0.readOnly ? "yes" : "no", formatTimestamp($0.creationTimestamp),
                     formatTimestamp($0.modificationTimestamp), formatBytes($0.usage), $0.state ?? "-"]
                })
                print("\n\(rows.count) images listed.")
            }
        }
    }

    /// `berthctl portable inspect IMAGE [PREFIX…]`: GetImageMetadata.
    public struct Inspect: ParsableCommand {
        public static let configuration = CommandConfiguration(
            abstract: "Show a portable image's os-release and matching unit files.",
            discussion: "Without PREFIX, the units named like the image up to its first '_'; '-' for every unit.")
        @OptionGroup public var global: GlobalOptions
        @Flag(help: "Print the os-release and unit files themselves, as portablectl --cat.") public var cat = false
        @Argument(help: "Image name or path.") public var image: String
        @Argument(help: "Unit name prefixes or unit names.") public var prefixes: [String] = []
        public init() {}

        /// Everything inspect shows of an image.
        public struct Report: Codable, Sendable, Equatable {
            /// One unit file.
            public struct Unit: Codable, Sendable, Equatable {
                public var name: String
                public var contents: String
            }
            /// The image's path, as berthd found it.
            public var image: String
            /// The image's os-release, parsed.
            public var osRelease: [String: String]
            /// The matching unit files, in berthd's order.
            public var units: [Unit]
        }

        public func run() throws {
            try reporting {
                let name = try PortableArguments.image(image)
                let matches = try PortableArguments.matches(image: image, prefixes, allowAll: true)
                let reply = try Portable1Client(global).manager(.getImageMetadata, [.string(name), .strings(matches)])
                guard reply.count == 3, let path = reply[0].stringValue, let osRelease = reply[1].bytesValue else {
                    throw CLIError("GetImageMetadata returned an unexpected reply")
                }
                let units: [(name: String, contents: [UInt8])] = (reply[2].dictionaryEntries ?? []).compactMap {
                    guard let unit = $0.key.stringValue, let contents = $0.value.bytesValue else { return nil }
                    return (unit, contents)
                }
                if global.json {
                    let report = Report(image: path, osRelease: EnvironmentFile.parse(String(decoding: osRelease, as: UTF8.self)),
                                        units: units.map { Report.Unit(name: $0.name, contents: String(decoding: $0.contents, as: UTF8.self)) })
                    print(try jsonLine(report))
                } else if cat {
                    // The files' bytes as they are, as portablectl writes them.
                    var out = Data("-- OS Release: --\n".utf8)
                    out.append(contentsOf: osRelease)
                    for unit in units {
                        out.append(contentsOf: Array("\n-- Unit file: \(unit.name) --\n".utf8))
                        out.append(contentsOf: unit.contents)
                    }
                    FileHandle.standardOutput.write(out)
                } else {
                    let os = EnvironmentFile.parse(String(decoding: osRelease, as: UTF8.self))
                    print("Image:\n\t\(path)")
                    print("Portable Service:\n\t\(os["PORTABLE_PRETTY_NAME"] ?? "n/a")")
                    print("Operating System:\n\t\(os["PRETTY_NAME"] ?? "n/a")")
                    if !units.isEmpty { print("Unit files:") }
                    for unit in units { print("\t\(unit.name)") }
                }
            }
        }
    }

    /// `berthctl portable attach IMAGE [PREFIX…]`: AttachImage (…WithExtensions with --extension or --force).
    public struct Attach: ParsableCommand {
        public static let configuration = CommandConfiguration(
            abstract: "Attach a portable image's units (writes the unit files; reloads and starts nothing).",
            discussion: "Without PREFIX, the units named like the image up to its first '_'.")
        @OptionGroup public var global: GlobalOptions
        @OptionGroup public var attach: PortableAttachOptions
        @OptionGroup public var scope: PortableScopeOptions
        @Argument(help: "Image name or path.") public var image: String
        @Argument(help: "Unit name prefixes or unit names.") public var prefixes: [String] = []
        public init() {}

        public func run() throws {
            try reporting {
                let matches = try PortableArguments.matches(image: image, prefixes, allowAll: false)
                let (member, arguments) = try attach.call(.attachImage, .attachImageWithExtensions, image: try PortableArguments.image(image),
                                                          matches: matches, scope: scope)
                let reply = try Portable1Client(global).manager(member, arguments)
                let changes = PortableChangeRow.list(reply.first)
                if global.json { print(try jsonLine(changes)) } else { printChanges(changes) }
            }
        }
    }

    /// `berthctl portable detach IMAGE`: DetachImage (…WithExtensions with --extension or --force).
    public struct Detach: ParsableCommand {
        public static let configuration = CommandConfiguration(
            abstract: "Detach a portable image's units (removes the unit files; stops nothing).")
        @OptionGroup public var global: GlobalOptions
        @OptionGroup public var scope: PortableScopeOptions
        @Argument(help: "Image name or path.") public var image: String
        public init() {}

        public func run() throws {
            try reporting {
                let name = try PortableArguments.image(image, mayBeMissing: true)
                let extensions = try scope.resolvedExtensions()
                let client = try Portable1Client(global)
                let reply = scope.withExtensions
                    ? try client.manager(.detachImageWithExtensions, [.string(name), .strings(extensions), .uint64(scope.flags)])
                    : try client.manager(.detachImage, [.string(name), .boolean(scope.runtime)])
                let changes = PortableChangeRow.list(reply.first)
                if global.json { print(try jsonLine(changes)) } else { printChanges(changes) }
            }
        }
    }

    /// `berthctl portable reattach IMAGE [PREFIX…]`: ReattachImage (…WithExtensions with --extension or --force).
    public struct Reattach: ParsableCommand {
        public static let configuration = CommandConfiguration(
            abstract: "Detach and attach a portable image's units again in one step (reloads and restarts nothing).",
            discussion: "Without PREFIX, the units named like the image up to its first '_'.")
        @OptionGroup public var global: GlobalOptions
        @OptionGroup public var attach: PortableAttachOptions
        @OptionGroup public var scope: PortableScopeOptions
        @Argument(help: "Image name or path.") public var image: String
        @Argument(help: "Unit name prefixes or unit names.") public var prefixes: [String] = []
        public init() {}

        /// Reattach's two change lists.
        public struct Changes: Codable, Sendable, Equatable {
            /// What the detach removed.
            public var removed: [PortableChangeRow]
            /// What the attach made.
            public var updated: [PortableChangeRow]
        }

        public func run() throws {
            try reporting {
                let matches = try PortableArguments.matches(image: image, prefixes, allowAll: false)
                let (member, arguments) = try attach.call(.reattachImage, .reattachImageWithExtensions,
                                                          image: try PortableArguments.image(image), matches: matches, scope: scope)
                let reply = try Portable1Client(global).manager(member, arguments)
                let changes = Changes(removed: PortableChangeRow.list(reply.first), updated: PortableChangeRow.list(reply.dropFirst().first))
                if global.json {
                    print(try jsonLine(changes))
                } else {
                    printChanges(changes.removed)
                    printChanges(changes.updated)
                }
            }
        }
    }

    /// `berthctl portable is-attached IMAGE`: GetImageState; exit status 1 when detached.
    public struct IsAttached: ParsableCommand {
        public static let configuration = CommandConfiguration(
            commandName: "is-attached",
            abstract: "Print whether a portable image is attached (exit status 1 when detached).",
            discussion: """
                The state is detached, attached, enabled or running (with -runtime when attached for this \
                boot only). portablectl 252 means to exit non-zero when detached but loses its own return \
                value and always exits 0; berthctl exits 1.
                """)
        @OptionGroup public var global: GlobalOptions
        @Argument(help: "Image name or path.") public var image: String
        public init() {}

        /// The image and its state, for `--json`.
        public struct State: Codable, Sendable, Equatable {
            public var image: String
            public var state: String
        }

        public func run() throws {
            var detached = false
            try reporting {
                let name = try PortableArguments.image(image, mayBeMissing: true)
                guard let state = try Portable1Client(global).manager(.getImageState, [.string(name)]).first?.stringValue else {
                    throw CLIError("GetImageState returned no state")
                }
                print(global.json ? try jsonLine(State(image: name, state: state)) : state)
                detached = state == "detached"
            }
            if detached { throw ExitCode(1) }
        }
    }

    /// `berthctl portable read-only IMAGE [yes|no]`: MarkImageReadOnly.
    public struct ReadOnly: ParsableCommand {
        public static let configuration = CommandConfiguration(commandName: "read-only",
                                                               abstract: "Mark a portable image read-only or writable.")
        @OptionGroup public var global: GlobalOptions
        @Argument(help: "Image name.") public var image: String
        @Argument(help: "yes (default) or no.") public var value: String = "yes"
        public init() {}
        public func run() throws {
            let flag = try parseBoolean(value)
            try reporting { try Portable1Client(global).manager(.markImageReadOnly, [.string(image), .boolean(flag)]) }
        }
    }

    /// `berthctl portable set-limit [IMAGE] SIZE`: SetImageLimit, or SetPoolLimit without an image.
    public struct SetLimit: ParsableCommand {
        public static let configuration = CommandConfiguration(commandName: "set-limit",
                                                               abstract: "Set the size limit of a portable image or of the pool.")
        @OptionGroup public var global: GlobalOptions
        @Argument(help: "[IMAGE] SIZE (bytes, or with K/M/G/T; 'infinity' for none).") public var arguments: [String]
        public init() {}
        public func run() throws {
            let (image, size) = try parseLimitArguments(arguments)
            try reporting {
                let client = try Portable1Client(global)
                if let image {
                    try client.manager(.setImageLimit, [.string(image), .uint64(size)])
                } else {
                    try client.manager(.setPoolLimit, [.uint64(size)])
                }
            }
        }
    }

    /// `berthctl portable remove IMAGE…`: RemoveImage for each.
    public struct Remove: ParsableCommand {
        public static let configuration = CommandConfiguration(abstract: "Remove portable images (not while attached).")
        @OptionGroup public var global: GlobalOptions
        @Argument(help: "Image names.") public var images: [String]
        public init() {}
        public func run() throws {
            try reporting {
                let client = try Portable1Client(global)
                for image in images { try client.manager(.removeImage, [.string(image)]) }
            }
        }
    }
}
