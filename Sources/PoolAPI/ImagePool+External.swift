import Linux

import struct SystemPackage.FilePath

/// Images of external backends (`ExternalImageBackend`, e.g. Ceph RBD) in the pool's discovery:
/// listed after the folder images, under the same name rules.
extension ImagePool {
    /// Appends every external backend's images whose names no folder image (nor `.host`, nor an
    /// earlier backend) took: one listing call per backend. A backend that cannot list now (its
    /// cluster unreachable) contributes nothing rather than failing the whole ListImages.
    static func appendExternalImages(to result: inout [Found], seen: inout Set<String>, _ c: DiscoveryContext) {
        for backend in c.registry.externalBackends {
            guard let names = try? backend.externalImageNames() else { continue }
            for name in names.sorted() where !name.hasPrefix(".#") && !seen.contains(name) {
                guard (try? validateName(name)) != nil else { continue }
                seen.insert(name)
                result.append(Found(name: name, entry: backend.poolEntry(forImage: name), backend: backend,
                                    isVendor: false, root: c.root))
            }
        }
    }

    /// The external image `name`, once no folder holds one of that name.
    static func findExternal(_ name: String, _ c: DiscoveryContext) -> Found? {
        for backend in c.registry.externalBackends where backend.hasExternalImage(named: name) {
            return Found(name: name, entry: backend.poolEntry(forImage: name), backend: backend, isVendor: false, root: c.root)
        }
        return nil
    }

    /// The external image a locator (`rbd://ceph/berth/NAME`) names, if its backend has it.
    static func findExternal(locator: FilePath, _ c: DiscoveryContext) -> Found? {
        for backend in c.registry.externalBackends {
            guard let name = backend.imageName(ofLocator: locator) else { continue }
            return backend.hasExternalImage(named: name)
                ? Found(name: name, entry: backend.poolEntry(forImage: name), backend: backend, isVendor: false, root: c.root)
                : nil
        }
        return nil
    }
}
