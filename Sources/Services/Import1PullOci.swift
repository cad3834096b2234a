import Bus
import Transfer

/// import1's PullOci (systemd v260): `(s ref, s local_name, s class, t flags) → (u, o)`, a
/// transfer of type `pull-oci` that the worker runs (Sources/TransferJobs/OciPull.swift).
extension Import1Service {
    /// PullOci's flag bits understood so far: bit 0 force (replace an image of that name).
    static let pullOciFlagForce: UInt64 = 1 << 0

    func pullOci(_ call: MethodCall, engine: TransferEngine) async throws -> [BusValue] {
        let text = try call.string(0)
        guard let reference = OciReference(text) else {
            throw BusError.invalidArgs("Image reference \(text) is invalid")
        }
        let requested = try call.string(1)
        let local = try Self.checkedLocalName(requested.isEmpty ? reference.defaultImageName : requested)
        let imageClass = try call.string(2)
        guard imageClass == "machine" else {
            throw BusError.invalidArgs("Image class '\(imageClass)' not supported")
        }
        let flags = try call.uint64(3)
        guard flags & ~Self.pullOciFlagForce == 0 else {
            throw BusError.invalidArgs("Flags 0x\(String(flags, radix: 16)) invalid")
        }
        let request = TransferRequest.pullOci(reference: reference.description, local: local,
                                              force: flags & Self.pullOciFlagForce != 0)
        return try await start(request, engine: engine)
    }
}
