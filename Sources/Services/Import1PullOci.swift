import Bus
import PoolAPI
import Transfer

/// import1's PullOci (systemd v260): `(s ref, s local_name, s class, t flags) → (u, o)`, a
/// transfer of type `pull-oci` that the worker runs (Sources/TransferJobs/OciPull.swift).
/// `local_name` "" means the repository's last component; flags are force, read-only and
/// keep-download (an OCI pull always keeps its layers in the pool's layer cache).
extension Import1Service {
    func pullOci(_ call: MethodCall, engine: TransferEngine) async throws -> [BusValue] {
        let text = try call.string(0)
        guard let reference = OciReference(text) else {
            throw BusError.invalidArgs("Image reference \(text) is invalid")
        }
        let requested = try call.string(1)
        let local = try Self.checkedLocalName(requested.isEmpty ? reference.defaultImageName : requested)
        let imageClass = try Self.imageClass(try call.string(2))
        let flags = try Self.flags(try call.uint64(3), for: .pullOci)
        let request = TransferRequest.pullOci(reference: reference.description, local: local, imageClass: imageClass, flags: flags)
        return try await start(request, engine: engine)
    }
}
