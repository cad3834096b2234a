import Linux
import Transfer
import TransferJobs

extension FuzzTargets {
    /// The bytes as what a (hostile or broken) worker writes on its status pipe, read by
    /// berthd's `WorkerProcess.StatusReader` in pieces as a pipe hands them over. The first
    /// byte picks the piece size, so reads that split lines anywhere are tried. Every event
    /// is in range, and a log line never carries a newline into a D-Bus signal.
    static func statusProtocol(_ data: UnsafeRawBufferPointer) {
        guard let first = data.first else { return }
        let piece = Int(first) + 1
        let body = UnsafeRawBufferPointer(rebasing: data[1...])
        var reader = WorkerProcess.StatusReader { event in
            switch event {
            case .progress(let p):
                FuzzCheck.require(p.isFinite && p >= 0 && p <= 1, "progress \(p)")
            case .log(let priority, let message):
                FuzzCheck.require(priority >= 0 && priority <= 7, "log priority \(priority)")
                FuzzCheck.require(!message.utf8.contains(UInt8(ascii: "\n")), "log line with a newline")
            case .finished:
                FuzzCheck.require(false, "the status pipe finished a transfer")
            }
        }
        var start = 0
        while start < body.count {
            let end = min(start + piece, body.count)
            if !reader.feed(UnsafeRawBufferPointer(rebasing: body[start..<end])) { break }
            start = end
        }
        reader.finish()
    }

    /// The first line as the file a checksum is looked up for, the rest as SHA256SUMS (and
    /// the whole input as a `.sha256` file): a digest found is 64 lower-case hex digits.
    static func sha256Sums(_ data: UnsafeRawBufferPointer) {
        let input = FuzzInput(data)
        let (file, sums) = input.firstLineAndRest
        func isDigest(_ s: String) -> Bool {
            s.utf8.count == 64 && s.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
        }
        if let hex = try? Pull.checksum(for: file, in: Array(sums.utf8)) {
            FuzzCheck.require(isDigest(hex), "SHA256SUMS digest '\(hex)'")
        }
        if let hex = try? Pull.parseSingleChecksum(input.bytes) {
            FuzzCheck.require(isDigest(hex), ".sha256 digest '\(hex)'")
        }
    }

    /// A reference the manifests are fetched for (its text appears in messages only).
    private static let manifestReference = OciReference("registry.example/fuzz/image:latest")

    /// The bytes as a registry's answer to a manifest request: an image manifest (whose
    /// descriptors are then checked, and their chain IDs computed) or an index (whose chosen
    /// entry is a sha256 digest).
    static func ociManifest(_ data: UnsafeRawBufferPointer) {
        guard let reference = manifestReference else { fatalError("the fuzz reference does not parse") }
        let bytes = Array(data)
        for contentType in [nil, "application/vnd.docker.distribution.manifest.v1+json"] {
            guard let step = try? OciPull.interpretManifest(bytes, contentType: contentType, reference: reference, architecture: "amd64") else {
                continue
            }
            switch step {
            case .index(let digest):
                FuzzCheck.require(OciReference.isDigest(digest), "index entry digest '\(digest)'")
            case .image(let manifest):
                guard let (_, layers) = try? OciPull.imageParts(of: manifest, reference: reference) else { continue }
                FuzzCheck.require(OciChainCache.chainIDs(layers).count == layers.count, "chain IDs")
            }
        }
    }

    /// The bytes as an image config (turned into nspawn settings, which must be lines without
    /// control characters: a hostile config must not add a line of its own), and as a token
    /// service's and a registry's error answer.
    static func ociConfig(_ data: UnsafeRawBufferPointer) {
        let bytes = Array(data)
        if let config = try? OciPull.imageConfig(bytes) {
            let settings = OciSettings.nspawn(config, reference: "registry.example/fuzz/image:latest")
            FuzzCheck.require(settings.text.unicodeScalars.allSatisfy { $0 == "\n" || ($0.value >= 0x20 && $0.value != 0x7f) },
                              "nspawn settings with a control character")
            for line in settings.text.split(separator: "\n") {
                FuzzCheck.require(line.hasPrefix("#") || line == "[Exec]" || line.contains("="), "nspawn settings line '\(line)'")
            }
        }
        if let token = OciJSON.token(bytes) {
            FuzzCheck.require(token.unicodeScalars.allSatisfy { $0.value > 0x20 && $0.value < 0x7f }, "token with a control character")
        }
        if let message = OciJSON.errorMessage(bytes) {
            FuzzCheck.require(message.unicodeScalars.allSatisfy { $0.value >= 0x20 && $0.value != 0x7f }, "registry error with a control character")
        }
    }

    /// The bytes as PullOci's `ref`: a reference that parses prints as one that parses back to
    /// it, and its parts are well-formed.
    static func ociReference(_ data: UnsafeRawBufferPointer) {
        guard let reference = OciReference(FuzzInput(data).text) else { return }
        FuzzCheck.require(OciReference(reference.description) == reference, "'\(reference)' does not parse back to itself")
        FuzzCheck.require(!reference.defaultImageName.isEmpty, "empty default image name")
        FuzzCheck.require(!reference.manifestReference.isEmpty, "empty manifest reference")
        _ = reference.isLoopback
        if let digest = reference.digest { FuzzCheck.require(OciReference.isDigest(digest), "digest '\(digest)'") }
    }

    /// The bytes as a registry's WWW-Authenticate header.
    static func wwwAuthenticate(_ data: UnsafeRawBufferPointer) {
        guard let challenge = BearerChallenge(FuzzInput(data).text) else { return }
        FuzzCheck.require(!challenge.realm.isEmpty, "empty realm")
    }
}
