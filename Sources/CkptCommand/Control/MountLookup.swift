import Foundation

/// Finds the ckptfs mount holding `path`; returns its mountpoint and the path below it.
func ckptfsMount(containing path: String) throws(UserFacingFailure) -> (mountpoint: String, relative: String) {
    let abs = MountChecks.absolute(path)
    let candidates = MountChecks.mounts().filter { $0.type == "fuse.ckptfs" && (abs == $0.path || abs.hasPrefix($0.path == "/" ? "/" : $0.path + "/")) }
    guard let m = candidates.max(by: { $0.path.count < $1.path.count }) else {
        throw UserFacingFailure(message: "\(abs) is not on a ckptfs mount; give the mountpoint (or a path under it)")
    }
    var rel = String(abs.dropFirst(m.path.count))
    while rel.hasPrefix("/") { rel.removeFirst() }
    return (m.path, rel)
}
