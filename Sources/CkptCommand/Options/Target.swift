import CkptS3

/// Parses `s3://BUCKET[/PREFIX]` for `check` and `mount`, refusing a prefix the mount could not show: the
/// namespace maps each `/`-separated segment of a key to a file or directory name, and hides keys with a segment
/// that cannot be one (empty, `.`, `..`, or longer than NAME_MAX = 255 bytes). A prefix with such a segment
/// would mount a directory that no path can reach, so it is refused with the reason and a URL to write instead.
/// One trailing `/` is allowed (`s3://b/run-42/` is `s3://b/run-42`).
func parseTarget(_ raw: String) throws(UserFacingFailure) -> S3URL {
    let target: S3URL
    do { target = try S3URL(raw) } catch { throw UserFacingFailure(message: error.description) }
    // S3URL drops the slashes after the bucket; the segments are checked on the text as written.
    var rest = Substring(raw.dropFirst("s3://".count + target.bucket.count))
    guard rest.hasPrefix("/") else { return target }
    rest = rest.dropFirst()
    if rest.hasSuffix("/") { rest = rest.dropLast() }
    guard !rest.isEmpty else { return target }
    let segments = rest.split(separator: "/", omittingEmptySubsequences: false)
    var problems: [String] = []
    for s in segments {
        let why: String?
        switch s {
        case "": why = "an empty segment (two slashes in a row, or one right after the bucket)"
        case ".": why = "a '.' segment"
        case "..": why = "a '..' segment (S3 keys are not paths: '..' is not resolved, it is part of the key)"
        default: why = s.utf8.count > 255 ? "a segment of \(s.utf8.count) bytes ('\(s.prefix(20))…'; a file name holds at most 255)" : nil
        }
        if let why, !problems.contains(why) { problems.append(why) }
    }
    guard !problems.isEmpty else { return target }
    let kept = segments.filter { !$0.isEmpty && $0 != "." && $0 != ".." && $0.utf8.count <= 255 }
    let suggestion = kept.isEmpty ? "s3://\(target.bucket)" : "s3://\(target.bucket)/" + kept.joined(separator: "/")
    throw UserFacingFailure(message: "'\(raw)' has a prefix that cannot be mounted: it has \(problems.joined(separator: " and ")), "
        + "and each '/'-separated part of a prefix must be a valid file name (keys with such parts are not shown by the mount)\n"
        + "  fix: write the prefix with only non-empty names other than '.' and '..', of at most 255 bytes each, "
        + "e.g. \(suggestion)")
}
