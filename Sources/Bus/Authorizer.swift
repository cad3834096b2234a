/// Decides whether the sender of a mutating call may do it: root may; anyone else only if polkit
/// is on the bus and says so for the action (CheckAuthorization); without polkit, AccessDenied.
///
/// Reading methods and properties do not call it: they are open to every caller, as in systemd.
public struct Authorizer: Sendable {
    /// polkit's bus name and interface.
    public static let polkitName = "org.freedesktop.PolicyKit1"
    static let polkitPath: ObjectPath = "/org/freedesktop/PolicyKit1/Authority"
    static let polkitInterface = "org.freedesktop.PolicyKit1.Authority"

    /// An authorizer; it holds no state, polkit is looked up per call.
    public init() {}

    /// Throws `org.freedesktop.DBus.Error.AccessDenied` unless the caller of `call` may perform
    /// polkit action `action` (e.g. `org.freedesktop.machine1.manage-images`).
    public nonisolated(nonsending) func authorize(_ call: MethodCall, action: String, details: [String: String] = [:]) async throws(BusError) {
        let creds = try await call.credentials()
        if creds.uid == 0 { return }
        guard try await call.bus.nameHasOwner(Authorizer.polkitName), let sender = call.sender else {
            throw BusError.accessDenied("Access denied: \(call.member) needs root or polkit authorization for \(action)")
        }
        // Subject: the caller's bus name, which polkit resolves to its process and user itself.
        let subject = BusValue.structure([.string("system-bus-name"), .variantDictionary(["name": .string(sender)])])
        let flags: UInt32 = call.allowsInteractiveAuthorization ? 1 : 0  // AllowUserInteraction
        let reply = try await call.bus.call(
            destination: Authorizer.polkitName, path: Authorizer.polkitPath, interface: Authorizer.polkitInterface,
            member: "CheckAuthorization",
            [subject, .string(action), .stringDictionary(details), .uint32(flags), .string("")])
        guard let result = reply.first?.structureValue, let authorized = result.first?.boolValue else {
            throw BusError.accessDenied("polkit gave no answer for \(action)")
        }
        if authorized { return }
        if result.count > 1, result[1].boolValue == true {
            throw BusError(name: BusError.Name.interactiveAuthorizationRequired,
                           message: "Interactive authentication required for \(action)")
        }
        throw BusError.accessDenied("Access denied by polkit for \(action)")
    }
}
