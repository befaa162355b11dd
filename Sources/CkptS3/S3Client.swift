// The S3 client: a protocol the filesystem core programs against, and its libcurl implementation.
//
// Every operation goes through `perform`, which builds the URL (path or virtual-hosted style), signs
// the request with SigV4 at send time, sends it through the shared `HTTPClient`, turns error
// responses (and the `<Error>` bodies some operations send with 200) into typed `S3Error`s, and retries
// what may succeed later (5xx, SlowDown, timeouts, resets, short bodies) as the configuration's
// `RetryPolicy` says: capped exponential backoff and full jitter, `maxAttempts` in all. This loop is the
// only place an S3 request is sent again; the transport below never retries. A clock-skew error is
// retried once with the server's clock, and one rejected as ExpiredToken after a credentials refresh (at most twice)
// (neither counts as an attempt); an answer to HEAD, which has no body to tell its error code, counts as the one
// (403 with a Date header off by more than 5 minutes) or the other (400, with refreshable credentials). Credentials are read from the provider for each request. Nothing here
// logs or returns a secret.
import CkptDigest
import CkptHTTP
import Foundation
import Logging
import Synchronization

/// The S3 operations ckptfs uses. The filesystem core depends on this protocol only, so it can be
/// tested with an in-memory implementation. Its signatures use this module's types only (`ObjectBody`,
/// `ObjectBodySink`, `S3Error`...), never the transport's. A call that throws has already been retried as
/// far as the client's `RetryPolicy` allows: callers should not send the same request again, only retry
/// larger work for reasons the client cannot see.
public protocol ObjectClient: Sendable {
    func headBucket(_ bucket: String) async throws(S3Error)
    func headObject(_ bucket: String, _ key: String, versionId: String?, ifMatch: String?) async throws(S3Error) -> ObjectInfo
    /// Reads an object (or `range`, end exclusive) into memory.
    func getObject(_ bucket: String, _ key: String, range: Range<Int64>?, ifMatch: String?, versionId: String?) async throws(S3Error) -> (ObjectInfo, [UInt8])
    /// Reads an object (or `range`) into `sink`, which receives (offset within the returned bytes, bytes).
    func getObject(_ bucket: String, _ key: String, range: Range<Int64>?, ifMatch: String?, versionId: String?,
                   sink: @escaping ObjectBodySink) async throws(S3Error) -> ObjectInfo
    func putObject(_ bucket: String, _ key: String, body: ObjectBody, options: PutOptions) async throws(S3Error) -> WriteResult
    func createMultipartUpload(_ bucket: String, _ key: String, options: PutOptions) async throws(S3Error) -> String
    func uploadPart(_ bucket: String, _ key: String, uploadId: String, partNumber: Int, body: ObjectBody,
                    checksum: BodyChecksum?) async throws(S3Error) -> String
    func completeMultipartUpload(_ bucket: String, _ key: String, uploadId: String, parts: [CompletedPart],
                                 condition: WriteCondition?) async throws(S3Error) -> WriteResult
    func abortMultipartUpload(_ bucket: String, _ key: String, uploadId: String) async throws(S3Error)
    func listParts(_ bucket: String, _ key: String, uploadId: String, partNumberMarker: Int?) async throws(S3Error) -> ListPartsPage
    func listMultipartUploads(_ bucket: String, prefix: String?, keyMarker: String?, uploadIdMarker: String?) async throws(S3Error) -> ListMultipartUploadsPage
    func copyObject(from source: (bucket: String, key: String, versionId: String?), to bucket: String, _ key: String,
                    ifMatch: String?, condition: WriteCondition?, options: PutOptions?) async throws(S3Error) -> WriteResult
    func uploadPartCopy(from source: (bucket: String, key: String, versionId: String?), range: Range<Int64>?,
                        to bucket: String, _ key: String, uploadId: String, partNumber: Int, ifMatch: String?) async throws(S3Error) -> String
    func deleteObject(_ bucket: String, _ key: String, versionId: String?) async throws(S3Error)
    func deleteObjects(_ bucket: String, _ objects: [ObjectToDelete]) async throws(S3Error) -> DeleteObjectsResult
    func listObjectsV2(_ bucket: String, prefix: String?, delimiter: String?, continuationToken: String?,
                       startAfter: String?, maxKeys: Int?) async throws(S3Error) -> ListObjectsPage
    func listObjectVersions(_ bucket: String, prefix: String?, delimiter: String?, keyMarker: String?,
                            versionIdMarker: String?, maxKeys: Int?) async throws(S3Error) -> ListVersionsPage
}

/// How many times the calls of a task sent their request, retries included: set `RequestTally.current` around
/// a call whose request is not idempotent (CreateMultipartUpload makes a new upload each time it is sent) to
/// learn whether a retry may have left the first one behind, its reply lost. Clients that send requests count
/// each one sent (`S3Client` does); a client that counts nothing leaves it 0.
public final class RequestTally: Sendable {
    private let count = Atomic<Int>(0)
    public init() {}
    /// Requests sent so far.
    public var sent: Int { count.load(ordering: .relaxed) }
    public func add() { count.wrappingAdd(1, ordering: .relaxed) }
    /// Runs `body` with this tally as `current`.
    public func counting<T>(_ body: () async throws(S3Error) -> T) async throws(S3Error) -> T {
        let r: Result<T, S3Error> = await RequestTally.$current.withValue(self) {
            do throws(S3Error) { return .success(try await body()) } catch { return .failure(error) }
        }
        return try r.get()
    }
    /// The tally of the calls the current task makes (nil: nobody counts).
    @TaskLocal public static var current: RequestTally?
}

/// The libcurl-backed S3 client.
public final class S3Client: ObjectClient {
    public let configuration: S3ClientConfiguration
    public let http: HTTPClient
    let logger: Logger
    /// Requests sent again after a failed attempt (each retry counts once), since the client was made.
    public var retries: Int { retryCount.load(ordering: .relaxed) }
    private let retryCount = Atomic<Int>(0)
    /// Seconds to add to the local clock, learned from a RequestTimeTooSkewed answer.
    private let clockOffset = Mutex<TimeInterval>(0)

    public init(configuration: S3ClientConfiguration, http: HTTPClient? = nil,
                logger: Logger = Logger(label: "ckptfs.s3")) {
        self.configuration = configuration
        self.http = http ?? HTTPClient(configuration: configuration.http)
        self.logger = logger
    }

    // MARK: Request pipeline

    struct Request {
        var operation: String
        var method: HTTPMethod
        var bucket: String?
        var key: String?
        var query: [(String, String)] = []
        var headers: [(String, String)] = []
        var body: ObjectBody = .empty
        var sink: ObjectBodySink? = nil
        /// Status codes that count as success besides 2xx (none by default).
        var extraSuccess: Set<Int> = []
        /// The operation may answer 200 with an `<Error>` document (CompleteMultipartUpload, CopyObject,
        /// UploadPartCopy): such an answer is an error like any other, retried or thrown.
        var embeddedErrors = false
        /// The body is object data (PutObject, UploadPart): sent with `x-amz-content-sha256: UNSIGNED-PAYLOAD`
        /// whether it is in memory or in a file, like the AWS SDKs' uploads over https (no second pass over the
        /// data); a Content-MD5 or x-amz-checksum-crc32c, when given, is signed and checked by the server.
        var objectData = false
        /// Not idempotent (CreateMultipartUpload makes a new upload each time): sent on a new connection, so
        /// only this client sends it again, counted in `RequestTally` (`HTTPRequest.freshConnection`).
        var freshConnection = false
    }

    /// The URL and the path as signed, for a bucket and key.
    func target(bucket: String?, key: String?, query: [(String, String)]) -> (url: String, host: String, path: String) {
        let ep = configuration.endpoint
        var host = ep.authority
        var path = ep.basePath
        if let bucket {
            if configuration.usesVirtualHost(bucket: bucket) {
                host = "\(bucket).\(host)"
            } else {
                path += "/" + URIEncoding.encode(bucket)
            }
        }
        if let key { path += "/" + URIEncoding.encode(key, keepSlash: true) }
        if path.isEmpty { path = "/" }
        var url = "\(ep.scheme)://\(host)\(path)"
        if !query.isEmpty {
            url += "?" + query.map { $0.1.isEmpty && S3Client.bareQueryNames.contains($0.0)
                ? URIEncoding.encode($0.0) : "\(URIEncoding.encode($0.0))=\(URIEncoding.encode($0.1))" }
                .joined(separator: "&")
        }
        return (url, host, path)
    }

    /// Sub-resources sent without `=`, as S3 documents them.
    static let bareQueryNames: Set<String> = ["uploads", "delete", "versions", "versioning", "location"]

    func perform(_ r: Request) async throws(S3Error) -> HTTPResponse {
        var attempt = 0
        var skewRetried = false
        /// Refreshes made for this request after S3 rejected its credentials as expired (at most 2: a refresh that
        /// raced a revocation of every key handed out so far gets keys that are revoked too).
        var tokenRefreshes = 0
        let tally = RequestTally.current
        while true {
            attempt += 1
            tally?.add()
            let (url, host, path) = target(bucket: r.bucket, key: r.key, query: r.query)
            var headers = r.headers
            headers.append(("host", host))
            let now = Date().addingTimeInterval(clockOffset.withLock { $0 })
            headers.append(("x-amz-date", SigV4Signer.amzDate(now)))
            // Object data goes unsigned (`Request.objectData`: read from a file as it is sent, or a small file's
            // bytes whose signed Content-MD5 the server checks the body against); other bodies in memory are
            // signed by their SHA-256.
            let payloadHash: String
            switch r.body {
            case .empty: payloadHash = Digest.sha256([UInt8]()).hexString
            case .bytes(let b): payloadHash = r.objectData ? "UNSIGNED-PAYLOAD" : Digest.sha256(b).hexString
            case .file: payloadHash = "UNSIGNED-PAYLOAD"
            }
            headers.append(("x-amz-content-sha256", payloadHash))
            if let provider = configuration.credentialsProvider {
                // Read per request: a background refresh takes effect on the next request.
                let creds: Credentials
                do { creds = try await provider.credentials() } catch {
                    throw S3Error(code: .other("CredentialsUnavailable"), s3Code: "CredentialsUnavailable",
                                  message: error.description, operation: r.operation, bucket: r.bucket, key: r.key)
                }
                if let token = creds.sessionToken { headers.append(("x-amz-security-token", token)) }
                let signer = SigV4Signer(credentials: creds, region: configuration.region)
                let sig = signer.sign(method: r.method.rawValue, path: path, query: r.query, headers: headers,
                                      payloadHash: payloadHash, date: now)
                headers.append(("Authorization", sig.authorization))
            }
            // curl sets Host itself from the URL; do not send it twice.
            let wire = headers.filter { $0.0 != "host" }
            logger.debug("s3 request", metadata: ["s3.op": "\(r.operation)", "s3.bucket": "\(r.bucket ?? "")",
                                                  "s3.key": "\(r.key ?? "")", "s3.attempt": "\(attempt)"])
            var error: S3Error
            do {
                let response = try await http.execute(HTTPRequest(method: r.method, url: url, headers: wire, body: r.body.http,
                                                                  freshConnection: r.freshConnection),
                                                      sink: r.sink)
                if (200..<300).contains(response.status) || r.extraSuccess.contains(response.status) {
                    // A body shorter than Content-Length that libcurl did not flag (e.g. connection closed cleanly).
                    if r.method != .HEAD, let cl = response.header("content-length").flatMap(Int64.init), cl != response.bodyLength {
                        error = S3Error.transportFailure(
                            HTTPTransportError(kind: .partialBody, curlCode: 18,
                                               message: "body of \(response.bodyLength) bytes, Content-Length \(cl)",
                                               origin: configuration.endpoint.description),
                            operation: r.operation, bucket: r.bucket, key: r.key)
                    } else if r.embeddedErrors, let root = try? XML.parse(response.body), root.name == "Error" {
                        error = S3Error.fromXML(root, status: response.status, operation: r.operation, bucket: r.bucket, key: r.key)
                        error.requestId = error.requestId ?? response.header("x-amz-request-id")
                    } else {
                        return response
                    }
                } else {
                    error = S3Error.from(response: response, operation: r.operation, bucket: r.bucket, key: r.key)
                    // An answer to HEAD has no body, so its error code is not known (S3 sends no x-amz-error-code):
                    // a 403 there may be RequestTimeTooSkewed (told by the Date header), a 400 ExpiredToken or
                    // InvalidToken (both 400 in S3's error code list).
                    let codeUnknown = response.body.isEmpty && response.header("x-amz-error-code") == nil
                    let serverDate = response.header("date").flatMap(S3Date.parseRFC1123)
                    let skewed = error.code == .requestTimeTooSkewed
                        || (codeUnknown && response.status == 403 && serverDate.map { abs($0.timeIntervalSinceNow) > 300 } == true)
                    let tokenRejected = error.code == .expiredToken || error.s3Code == "InvalidToken"
                        || (codeUnknown && response.status == 400)
                    if skewed, !skewRetried, let serverDate {
                        skewRetried = true
                        clockOffset.withLock { $0 = serverDate.timeIntervalSince(Date()) }
                        logger.warning("clock skew: adjusting request time by the server's clock",
                                       metadata: ["s3.skew_seconds": "\(Int(serverDate.timeIntervalSinceNow))"])
                        attempt -= 1
                        continue
                    }
                    // Temporary credentials that S3 no longer accepts: refresh and send again (botocore
                    // does the same for ExpiredToken / InvalidToken / RequestExpired).
                    if tokenRejected, tokenRefreshes < 2,
                       let provider = configuration.credentialsProvider, provider.source.canRefresh {
                        tokenRefreshes += 1
                        logger.notice("credentials rejected as expired; refreshing and retrying",
                                      metadata: ["s3.op": "\(r.operation)", "credentials.source": "\(provider.source.name)"])
                        if (try? await provider.refresh()) != nil {
                            attempt -= 1
                            continue
                        }
                    }
                }
            } catch let e as HTTPTransportError {
                if e.kind == .cancelled { throw S3Error.transportFailure(e, operation: r.operation, bucket: r.bucket, key: r.key) }
                error = S3Error.transportFailure(e, operation: r.operation, bucket: r.bucket, key: r.key)
            } catch {
                throw S3Error(code: .other("Internal"), s3Code: "Internal", message: "\(error)", operation: r.operation,
                              bucket: r.bucket, key: r.key)
            }
            error.attempts = attempt
            guard configuration.retry.shouldRetry(error, attempt: attempt), !Task.isCancelled else { throw error }
            let wait = configuration.retry.delay(afterAttempt: attempt)
            retryCount.wrappingAdd(1, ordering: .relaxed)
            logger.debug("s3 retry", metadata: ["s3.op": "\(r.operation)", "s3.error": "\(error.s3Code)",
                                                "s3.wait_ms": "\(wait.components.seconds * 1000 + wait.components.attoseconds / 1_000_000_000_000_000)"])
            try? await Task.sleep(for: wait)
        }
    }

    /// Parses an XML body, or fails with a malformed-response error naming the operation.
    func xml(_ response: HTTPResponse, _ r: Request) throws(S3Error) -> XML.Node {
        do { return try XML.parse(response.body) } catch {
            throw S3Error.malformed("\(error)", operation: r.operation, bucket: r.bucket, key: r.key)
        }
    }

    static func info(from r: HTTPResponse, rangeRequested: Bool) -> ObjectInfo {
        var size = r.header("content-length").flatMap(Int64.init) ?? r.bodyLength
        if let cr = r.header("content-range"), let slash = cr.lastIndex(of: "/"), let total = Int64(cr[cr.index(after: slash)...]) {
            size = total
        } else if rangeRequested && r.status == 206 {
            size = -1
        }
        var meta: [String: String] = [:]
        for h in r.headers where h.name.hasPrefix("x-amz-meta-") {
            meta[String(h.name.dropFirst("x-amz-meta-".count))] = h.value
        }
        return ObjectInfo(size: size, etag: S3Client.quotedETag(r.header("etag") ?? ""), lastModified: r.header("last-modified").flatMap(S3Date.parseRFC1123),
                          contentType: r.header("content-type"), versionId: r.header("x-amz-version-id"), metadata: meta)
    }

    /// S3 quotes ETags; some servers do not everywhere. Always hand out the quoted form.
    public static func quotedETag(_ etag: String) -> String {
        if etag.isEmpty || (etag.hasPrefix("\"") && etag.hasSuffix("\"") && etag.count >= 2) { return etag }
        if etag.hasPrefix("W/") { return etag }
        return "\"\(etag)\""
    }

    static func putHeaders(_ o: PutOptions) -> [(String, String)] {
        var h: [(String, String)] = []
        if let t = o.contentType { h.append(("Content-Type", t)) }
        for (k, v) in o.metadata.sorted(by: { $0.key < $1.key }) { h.append(("x-amz-meta-\(k.lowercased())", v)) }
        if let md5 = o.contentMD5 { h.append(("Content-MD5", md5.base64String)) }
        h += conditionHeaders(o.condition)
        return h
    }

    static func conditionHeaders(_ c: WriteCondition?) -> [(String, String)] {
        switch c {
        case .ifNoneMatch: return [("If-None-Match", "*")]
        case .ifMatch(let etag): return [("If-Match", etag)]
        case nil: return []
        }
    }

    static func rangeHeader(_ range: Range<Int64>) -> (String, String) {
        ("Range", "bytes=\(range.lowerBound)-\(range.upperBound - 1)")
    }

    static func copySource(_ s: (bucket: String, key: String, versionId: String?)) -> String {
        var v = "/\(URIEncoding.encode(s.bucket))/\(URIEncoding.encode(s.key, keepSlash: true))"
        if let id = s.versionId { v += "?versionId=\(URIEncoding.encode(id))" }
        return v
    }

    // MARK: Buckets

    public func headBucket(_ bucket: String) async throws(S3Error) {
        let r = Request(operation: "HeadBucket", method: .HEAD, bucket: bucket)
        do {
            _ = try await perform(r)
        } catch let e where e.httpStatus != nil && e.httpStatus != 404 && e.s3Code != "NoSuchBucket" {
            // HEAD answers carry no error body: ask once more with a GET to learn the precise cause
            // (InvalidAccessKeyId vs SignatureDoesNotMatch vs AccessDenied, the bucket's region).
            var probe = Request(operation: "HeadBucket", method: .GET, bucket: bucket)
            probe.query = [("list-type", "2"), ("max-keys", "0")]
            do {
                _ = try await perform(probe)
            } catch let detailed {
                var d = detailed
                if d.bucketRegion == nil { d.bucketRegion = e.bucketRegion }
                throw d
            }
            throw e
        }
    }

    // MARK: Objects

    public func headObject(_ bucket: String, _ key: String, versionId: String? = nil, ifMatch: String? = nil) async throws(S3Error) -> ObjectInfo {
        var r = Request(operation: "HeadObject", method: .HEAD, bucket: bucket, key: key)
        if let versionId { r.query = [("versionId", versionId)] }
        if let ifMatch { r.headers.append(("If-Match", ifMatch)) }
        return S3Client.info(from: try await perform(r), rangeRequested: false)
    }

    func getRequest(_ bucket: String, _ key: String, range: Range<Int64>?, ifMatch: String?, versionId: String?) -> Request {
        var r = Request(operation: "GetObject", method: .GET, bucket: bucket, key: key)
        if let versionId { r.query = [("versionId", versionId)] }
        if let range { r.headers.append(S3Client.rangeHeader(range)) }
        if let ifMatch { r.headers.append(("If-Match", ifMatch)) }
        return r
    }

    public func getObject(_ bucket: String, _ key: String, range: Range<Int64>? = nil, ifMatch: String? = nil,
                          versionId: String? = nil) async throws(S3Error) -> (ObjectInfo, [UInt8]) {
        if let range, range.isEmpty { return (try await headObject(bucket, key, versionId: versionId, ifMatch: ifMatch), []) }
        let r = getRequest(bucket, key, range: range, ifMatch: ifMatch, versionId: versionId)
        let response = try await perform(r)
        try checkRange(response, range, r)
        return (S3Client.info(from: response, rangeRequested: range != nil), response.body)
    }

    public func getObject(_ bucket: String, _ key: String, range: Range<Int64>? = nil, ifMatch: String? = nil,
                          versionId: String? = nil, sink: @escaping ObjectBodySink) async throws(S3Error) -> ObjectInfo {
        if let range, range.isEmpty { return try await headObject(bucket, key, versionId: versionId, ifMatch: ifMatch) }
        var r = getRequest(bucket, key, range: range, ifMatch: ifMatch, versionId: versionId)
        r.sink = sink
        let response = try await perform(r)
        try checkRange(response, range, r)
        return S3Client.info(from: response, rangeRequested: range != nil)
    }

    /// A ranged GET must return exactly the bytes asked for (or fewer only at the end of the object).
    func checkRange(_ response: HTTPResponse, _ range: Range<Int64>?, _ r: Request) throws(S3Error) {
        guard let range else { return }
        if response.status == 200 {
            // The server ignored Range and sent the whole object: only acceptable when that is what we asked for.
            if range.lowerBound != 0 || response.bodyLength > range.count {
                throw S3Error.malformed("server ignored the Range header", operation: r.operation, bucket: r.bucket, key: r.key)
            }
            return
        }
        guard let cr = response.header("content-range"), cr.hasPrefix("bytes ") else { return }
        let spec = cr.dropFirst(6).split(separator: "/")[0].split(separator: "-")
        guard spec.count == 2, let first = Int64(spec[0]), let last = Int64(spec[1]) else { return }
        if first != range.lowerBound || last >= range.upperBound || response.bodyLength != last - first + 1 {
            throw S3Error.malformed("asked for bytes \(range.lowerBound)-\(range.upperBound - 1), got \(cr) with \(response.bodyLength) bytes",
                                    operation: r.operation, bucket: r.bucket, key: r.key)
        }
    }

    public func putObject(_ bucket: String, _ key: String, body: ObjectBody, options: PutOptions = .init()) async throws(S3Error) -> WriteResult {
        var r = Request(operation: "PutObject", method: .PUT, bucket: bucket, key: key)
        r.headers = S3Client.putHeaders(options)
        r.body = body
        r.objectData = true
        let response = try await perform(r)
        var w = WriteResult(etag: S3Client.quotedETag(response.header("etag") ?? ""), versionId: response.header("x-amz-version-id"),
                            lastModified: response.header("last-modified").flatMap(S3Date.parseRFC1123))
        let sse = response.header("x-amz-server-side-encryption")?.lowercased() ?? ""
        w.etagIsMD5 = !sse.hasPrefix("aws:kms") && response.header("x-amz-server-side-encryption-customer-algorithm") == nil
        return w
    }

    public func deleteObject(_ bucket: String, _ key: String, versionId: String? = nil) async throws(S3Error) {
        var r = Request(operation: "DeleteObject", method: .DELETE, bucket: bucket, key: key)
        if let versionId { r.query = [("versionId", versionId)] }
        _ = try await perform(r)
    }

    /// Deletes up to any number of objects, 1,000 a request (the S3 limit).
    public func deleteObjects(_ bucket: String, _ objects: [ObjectToDelete]) async throws(S3Error) -> DeleteObjectsResult {
        var result = DeleteObjectsResult(deleted: [], errors: [])
        var start = 0
        while start < objects.count {
            let chunk = objects[start..<min(start + 1000, objects.count)]
            start += chunk.count
            var xmlBody = "<Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Quiet>false</Quiet>"
            for o in chunk {
                xmlBody += "<Object><Key>\(XML.escape(o.key))</Key>"
                if let v = o.versionId { xmlBody += "<VersionId>\(XML.escape(v))</VersionId>" }
                xmlBody += "</Object>"
            }
            xmlBody += "</Delete>"
            let bytes = Array(xmlBody.utf8)
            var r = Request(operation: "DeleteObjects", method: .POST, bucket: bucket)
            r.query = [("delete", "")]
            r.headers = [("Content-Type", "application/xml"), ("Content-MD5", Digest.md5(bytes).base64String)]
            r.body = .bytes(bytes)
            let root = try xml(try await perform(r), r)
            for d in root.all("Deleted") {
                result.deleted.append(ObjectToDelete(key: d.string("Key") ?? "", versionId: d.string("VersionId")))
            }
            for e in root.all("Error") {
                result.errors.append((key: e.string("Key") ?? "", code: e.string("Code") ?? "", message: e.string("Message") ?? ""))
            }
        }
        return result
    }

    // MARK: Multipart

    public func createMultipartUpload(_ bucket: String, _ key: String, options: PutOptions = .init()) async throws(S3Error) -> String {
        var r = Request(operation: "CreateMultipartUpload", method: .POST, bucket: bucket, key: key)
        r.query = [("uploads", "")]
        r.freshConnection = true
        var o = options
        o.condition = nil  // conditions belong on CompleteMultipartUpload
        o.contentMD5 = nil
        r.headers = S3Client.putHeaders(o)
        if let a = options.checksumAlgorithm { r.headers.append(("x-amz-checksum-algorithm", a.rawValue)) }
        let root = try xml(try await perform(r), r)
        guard let id = root.string("UploadId"), !id.isEmpty else {
            throw S3Error.malformed("no UploadId in the answer", operation: r.operation, bucket: bucket, key: key)
        }
        return id
    }

    public func uploadPart(_ bucket: String, _ key: String, uploadId: String, partNumber: Int, body: ObjectBody,
                           checksum: BodyChecksum? = nil) async throws(S3Error) -> String {
        var r = Request(operation: "UploadPart", method: .PUT, bucket: bucket, key: key)
        r.query = [("partNumber", "\(partNumber)"), ("uploadId", uploadId)]
        switch checksum {
        case .md5(let md5): r.headers.append(("Content-MD5", md5.base64String))
        case .crc32c(let crc): r.headers.append(("x-amz-checksum-crc32c", CRC32C.s3String(crc)))
        case nil: break
        }
        r.body = body
        r.objectData = true
        let response = try await perform(r)
        guard let etag = response.header("etag") else {
            throw S3Error.malformed("no ETag for part \(partNumber)", operation: r.operation, bucket: bucket, key: key)
        }
        return S3Client.quotedETag(etag)
    }

    public func completeMultipartUpload(_ bucket: String, _ key: String, uploadId: String, parts: [CompletedPart],
                                        condition: WriteCondition? = nil) async throws(S3Error) -> WriteResult {
        var body = "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
        for p in parts.sorted(by: { $0.partNumber < $1.partNumber }) {
            body += "<Part><PartNumber>\(p.partNumber)</PartNumber><ETag>\(XML.escape(p.etag))</ETag>"
            if let crc = p.checksumCRC32C { body += "<ChecksumCRC32C>\(CRC32C.s3String(crc))</ChecksumCRC32C>" }
            body += "</Part>"
        }
        body += "</CompleteMultipartUpload>"
        var r = Request(operation: "CompleteMultipartUpload", method: .POST, bucket: bucket, key: key)
        r.query = [("uploadId", uploadId)]
        r.headers = [("Content-Type", "application/xml")] + S3Client.conditionHeaders(condition)
        r.body = .bytes(Array(body.utf8))
        r.embeddedErrors = true
        let response = try await perform(r)
        let root = try xml(response, r)
        guard root.name == "CompleteMultipartUploadResult" else {
            throw S3Error.malformed("unexpected <\(root.name)>", operation: r.operation, bucket: bucket, key: key)
        }
        return WriteResult(etag: S3Client.quotedETag(root.string("ETag") ?? ""), versionId: response.header("x-amz-version-id"), lastModified: nil)
    }

    public func abortMultipartUpload(_ bucket: String, _ key: String, uploadId: String) async throws(S3Error) {
        var r = Request(operation: "AbortMultipartUpload", method: .DELETE, bucket: bucket, key: key)
        r.query = [("uploadId", uploadId)]
        _ = try await perform(r)
    }

    public func listParts(_ bucket: String, _ key: String, uploadId: String, partNumberMarker: Int? = nil) async throws(S3Error) -> ListPartsPage {
        var r = Request(operation: "ListParts", method: .GET, bucket: bucket, key: key)
        r.query = [("uploadId", uploadId)]
        if let m = partNumberMarker { r.query.append(("part-number-marker", "\(m)")) }
        let root = try xml(try await perform(r), r)
        let parts = root.all("Part").map {
            PartSummary(partNumber: Int($0.string("PartNumber") ?? "") ?? 0, etag: S3Client.quotedETag($0.string("ETag") ?? ""),
                        size: Int64($0.string("Size") ?? "") ?? 0)
        }
        return ListPartsPage(parts: parts, isTruncated: root.string("IsTruncated") == "true",
                             nextPartNumberMarker: root.string("NextPartNumberMarker").flatMap(Int.init))
    }

    public func listMultipartUploads(_ bucket: String, prefix: String? = nil, keyMarker: String? = nil,
                                     uploadIdMarker: String? = nil) async throws(S3Error) -> ListMultipartUploadsPage {
        var r = Request(operation: "ListMultipartUploads", method: .GET, bucket: bucket)
        r.query = [("uploads", ""), ("encoding-type", "url")]
        if let prefix { r.query.append(("prefix", prefix)) }
        if let keyMarker { r.query.append(("key-marker", keyMarker)) }
        if let uploadIdMarker { r.query.append(("upload-id-marker", uploadIdMarker)) }
        let root = try xml(try await perform(r), r)
        let decode = S3Client.keyDecoder(root)
        let uploads = root.all("Upload").map {
            MultipartUploadSummary(key: decode($0.string("Key") ?? ""), uploadId: $0.string("UploadId") ?? "",
                                   initiated: $0.string("Initiated").flatMap(S3Date.parseISO8601))
        }
        return ListMultipartUploadsPage(uploads: uploads, isTruncated: root.string("IsTruncated") == "true",
                                        nextKeyMarker: root.string("NextKeyMarker").map(decode),
                                        nextUploadIdMarker: root.string("NextUploadIdMarker"))
    }

    // MARK: Copy

    public func copyObject(from source: (bucket: String, key: String, versionId: String?), to bucket: String, _ key: String,
                           ifMatch: String? = nil, condition: WriteCondition? = nil, options: PutOptions? = nil) async throws(S3Error) -> WriteResult {
        var r = Request(operation: "CopyObject", method: .PUT, bucket: bucket, key: key)
        r.headers = [("x-amz-copy-source", S3Client.copySource(source))]
        if let ifMatch { r.headers.append(("x-amz-copy-source-if-match", ifMatch)) }
        r.headers += S3Client.conditionHeaders(condition)  // of the destination (CopyObject, S3 API reference)
        if let options {
            r.headers.append(("x-amz-metadata-directive", "REPLACE"))
            r.headers += S3Client.putHeaders(options)
        }
        r.embeddedErrors = true
        let root = try xml(try await perform(r), r)
        return WriteResult(etag: S3Client.quotedETag(root.string("ETag") ?? ""), versionId: nil,
                           lastModified: root.string("LastModified").flatMap(S3Date.parseISO8601))
    }

    public func uploadPartCopy(from source: (bucket: String, key: String, versionId: String?), range: Range<Int64>?,
                               to bucket: String, _ key: String, uploadId: String, partNumber: Int,
                               ifMatch: String? = nil) async throws(S3Error) -> String {
        var r = Request(operation: "UploadPartCopy", method: .PUT, bucket: bucket, key: key)
        r.query = [("partNumber", "\(partNumber)"), ("uploadId", uploadId)]
        r.headers = [("x-amz-copy-source", S3Client.copySource(source))]
        if let range { r.headers.append(("x-amz-copy-source-range", "bytes=\(range.lowerBound)-\(range.upperBound - 1)")) }
        if let ifMatch { r.headers.append(("x-amz-copy-source-if-match", ifMatch)) }
        r.embeddedErrors = true
        let root = try xml(try await perform(r), r)
        guard let etag = root.string("ETag") else {
            throw S3Error.malformed("no ETag in CopyPartResult", operation: r.operation, bucket: bucket, key: key)
        }
        return S3Client.quotedETag(etag)
    }

    // MARK: Listing

    /// With `encoding-type=url` the server percent-encodes keys (so any byte survives XML); decode them
    /// only if it says it did.
    static func keyDecoder(_ root: XML.Node) -> @Sendable (String) -> String {
        if root.string("EncodingType")?.lowercased() == "url" {
            return { URIEncoding.decode($0, plusAsSpace: true) }
        }
        return { $0 }
    }

    public func listObjectsV2(_ bucket: String, prefix: String? = nil, delimiter: String? = nil, continuationToken: String? = nil,
                              startAfter: String? = nil, maxKeys: Int? = nil) async throws(S3Error) -> ListObjectsPage {
        var r = Request(operation: "ListObjectsV2", method: .GET, bucket: bucket)
        r.query = [("list-type", "2"), ("encoding-type", "url")]
        if let prefix, !prefix.isEmpty { r.query.append(("prefix", prefix)) }
        if let delimiter { r.query.append(("delimiter", delimiter)) }
        if let continuationToken { r.query.append(("continuation-token", continuationToken)) }
        if let startAfter { r.query.append(("start-after", startAfter)) }
        if let maxKeys { r.query.append(("max-keys", "\(maxKeys)")) }
        let root = try xml(try await perform(r), r)
        let decode = S3Client.keyDecoder(root)
        let objects = root.all("Contents").map {
            ObjectSummary(key: decode($0.string("Key") ?? ""), size: Int64($0.string("Size") ?? "") ?? 0,
                          etag: S3Client.quotedETag($0.string("ETag") ?? ""), lastModified: $0.string("LastModified").flatMap(S3Date.parseISO8601),
                          storageClass: $0.string("StorageClass"))
        }
        let prefixes = root.all("CommonPrefixes").compactMap { $0.string("Prefix").map(decode) }
        let truncated = root.string("IsTruncated") == "true"
        let token = root.string("NextContinuationToken")
        if truncated && (token ?? "").isEmpty {
            throw S3Error.malformed("truncated listing without NextContinuationToken", operation: r.operation, bucket: bucket, key: nil)
        }
        return ListObjectsPage(objects: objects, commonPrefixes: prefixes, isTruncated: truncated, nextContinuationToken: token)
    }

    public func listObjectVersions(_ bucket: String, prefix: String? = nil, delimiter: String? = nil, keyMarker: String? = nil,
                                   versionIdMarker: String? = nil, maxKeys: Int? = nil) async throws(S3Error) -> ListVersionsPage {
        var r = Request(operation: "ListObjectVersions", method: .GET, bucket: bucket)
        r.query = [("versions", ""), ("encoding-type", "url")]
        if let prefix, !prefix.isEmpty { r.query.append(("prefix", prefix)) }
        if let delimiter { r.query.append(("delimiter", delimiter)) }
        if let keyMarker { r.query.append(("key-marker", keyMarker)) }
        if let versionIdMarker { r.query.append(("version-id-marker", versionIdMarker)) }
        if let maxKeys { r.query.append(("max-keys", "\(maxKeys)")) }
        let root = try xml(try await perform(r), r)
        let decode = S3Client.keyDecoder(root)
        var versions: [ObjectVersion] = []
        for node in root.children where node.name == "Version" || node.name == "DeleteMarker" {
            versions.append(ObjectVersion(
                key: decode(node.string("Key") ?? ""), versionId: node.string("VersionId") ?? "null",
                isLatest: node.string("IsLatest") == "true", isDeleteMarker: node.name == "DeleteMarker",
                size: Int64(node.string("Size") ?? "") ?? 0, etag: node.string("ETag").map(S3Client.quotedETag),
                lastModified: node.string("LastModified").flatMap(S3Date.parseISO8601)))
        }
        return ListVersionsPage(versions: versions,
                                commonPrefixes: root.all("CommonPrefixes").compactMap { $0.string("Prefix").map(decode) },
                                isTruncated: root.string("IsTruncated") == "true",
                                nextKeyMarker: root.string("NextKeyMarker").map(decode),
                                nextVersionIdMarker: root.string("NextVersionIdMarker"))
    }
}
