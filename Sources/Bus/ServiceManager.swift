import CSystemd

/// Talking to the service manager that started us (systemd's notify protocol).
public enum ServiceManager {
    /// Sends `state` (e.g. `READY=1`, `STOPPING=1`) to `$NOTIFY_SOCKET` (sd_notify(3)); does
    /// nothing when the variable is unset. Returns whether a message was sent.
    @discardableResult
    public static func notify(_ state: String) -> Bool {
        sd_notify(0, state) > 0
    }
}
