import Glibc
import Linux
import PoolAPI

/// The nspawn settings file of a pulled OCI image (Env, Entrypoint/Cmd, WorkingDir, User of its
/// config as systemd.nspawn(5) `[Exec]` settings). The worker writes it beside its temp entry
/// (`.#NAME<hex>.nspawn`, a temp name berthd's start-up clean-up removes); once the image is
/// installed berthd renames it to `NAME.nspawn` beside the image, where systemd-nspawn looks
/// for the settings of an image in that folder. berthd never parses it.
enum OciSettingsFile {
    static func temporaryPath(for temp: String) -> String { temp + ".nspawn" }

    /// Moves the worker's settings file next to the installed `image` (replacing an older one).
    static func install(_ temp: String, for image: Image, warn: (String) -> Void) {
        guard let st = try? fileStatus(temp, followSymlinks: false), st.isRegular else { return }
        let final = image.path + ".nspawn"
        if rename(temp, final) != 0 {
            warn("cannot install the nspawn settings \(final): \(Errno.current)")
            _ = unlink(temp)
        }
    }

    /// Removes a settings file left by a failed pull.
    static func discard(_ temp: String?) {
        guard let temp else { return }
        _ = unlink(temp)
    }
}
