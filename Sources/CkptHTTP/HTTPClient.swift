// HTTP transport over libcurl's multi interface.
//
// Design: one `HTTPClient` owns a curl multi handle and a dedicated OS thread (not one of Swift's
// cooperative threads) that drives every transfer with `curl_multi_perform` / `curl_multi_poll`.
// `execute` is async: it hands a `Transfer` to that thread and suspends on a continuation, so many
// requests are in flight at once over the multi handle's pool of reused connections while no Swift
// task ever blocks in a libcurl call. Response bodies go to memory, or for successful responses to a
// caller-supplied positional sink (so a ranged GET can be written straight into a file at its offset,
// and a retry simply rewrites the same positions). Upload bodies come from memory or from a file range
// read with `pread`, so a multipart upload never holds a whole part in memory. A file range is read with
// O_DIRECT (a second descriptor of the same file) straight into libcurl's page-aligned upload buffer where
// offsets and sizes allow: a staged checkpoint was written with O_DIRECT and is not in the page cache, and
// reading it through the page cache cost a fifth of the daemon's CPU for a save (page allocation,
// read-ahead, and a copy into libcurl's buffer). Elsewhere (tmpfs, unaligned ranges) it is a plain pread.
//
// This is the only module that touches libcurl.
import CCurl
import CkptSystem
import Foundation
import Synchronization
import SystemPackage

/// The HTTP methods the S3 client uses.
public enum HTTPMethod: String, Sendable {
    case GET, PUT, POST, DELETE, HEAD
}

/// Where a request body comes from.
public enum HTTPRequestBody: Sendable {
    case empty
    case bytes([UInt8])
    /// `length` bytes of an open file starting at `offset`, read with `pread` (with O_DIRECT where the file
    /// system, offset and size allow); the caller keeps `descriptor` open and the bytes unchanged meanwhile.
    case file(descriptor: Int32, offset: Int64, length: Int64)

    public var length: Int64 {
        switch self {
        case .empty: return 0
        case .bytes(let b): return Int64(b.count)
        case .file(_, _, let length): return length
        }
    }
}

/// A request to send. `url` must already be percent-encoded; it is sent exactly as given.
public struct HTTPRequest: Sendable {
    public var method: HTTPMethod
    public var url: String
    public var headers: [(String, String)]
    public var body: HTTPRequestBody
    /// Sent on a new connection (CURLOPT_FRESH_CONNECT): libcurl sends a request again by itself when a reused
    /// connection closes before any answer, which a request that is not idempotent must not be (the first may
    /// have acted, its answer lost); on a new connection that is an error for the caller to see.
    public var freshConnection = false

    public init(method: HTTPMethod, url: String, headers: [(String, String)] = [], body: HTTPRequestBody = .empty,
                freshConnection: Bool = false) {
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.freshConnection = freshConnection
    }
}

/// A received response. Header names are lower-cased.
public struct HTTPResponse: Sendable {
    public var status: Int
    public var headers: [(name: String, value: String)]
    /// The body, unless it went to a sink (successful responses with a sink).
    public var body: [UInt8]
    /// Body bytes received, whether kept in `body` or written to a sink.
    public var bodyLength: Int64

    public init(status: Int, headers: [(name: String, value: String)], body: [UInt8], bodyLength: Int64? = nil) {
        self.status = status
        self.headers = headers
        self.body = body
        self.bodyLength = bodyLength ?? Int64(body.count)
    }

    /// The first value of a header (case-insensitive).
    public func header(_ name: String) -> String? {
        let n = name.lowercased()
        return headers.first(where: { $0.name == n })?.value
    }
}

/// Receives the body of a successful (2xx) response: `offset` is the position within the body.
/// Called on the transport thread; it should be quick (a `pwrite`, a memcpy). Throwing aborts the transfer.
public typealias HTTPBodySink = @Sendable (_ offset: Int64, _ bytes: UnsafeRawBufferPointer) throws -> Void

/// Options of the transport.
public struct HTTPClientConfiguration: Sendable {
    /// Most connections open at once (to all hosts); further transfers wait in libcurl's queue.
    public var maxConnections: Int = 64
    public var connectTimeout: Duration = .seconds(10)
    /// A transfer that moves no byte for this long fails with a timeout (and is retried by the caller).
    public var stallTimeout: Duration = .seconds(30)
    /// PEM bundle of trusted CAs (AWS_CA_BUNDLE); nil uses the system store.
    public var caBundle: String? = nil
    /// Verify the server's certificate and host name. On by default; turning it off is for testing only.
    public var verifyTLS: Bool = true
    public var userAgent: String = "ckptfs"
    /// Largest body kept in memory for a response without a sink.
    public var maxInMemoryBody: Int = 256 << 20
    /// Transport threads, each with its own multi handle and connections. Two let receiving and writing
    /// bodies use both cores of a small machine; more rarely helps.
    public var eventLoops: Int = 2

    public init() {}
}

/// A failure below HTTP: the request got no complete response. Whether to send it again is the caller's
/// decision (the S3 client's retry policy); this module never retries.
public struct HTTPTransportError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        case resolve, connect, tls, timeout, partialBody, connectionReset, cancelled, sinkFailed, bodyReadFailed, bodyTooLarge, other
    }

    public var kind: Kind
    /// libcurl's error code (CURLcode), for bug reports.
    public var curlCode: Int
    public var message: String
    /// Scheme, host and port of the request (never the path or query, which may carry secrets in presigned URLs).
    public var origin: String
    /// What a sink threw, when kind is `.sinkFailed`.
    public var underlying: (any Error)?

    public init(kind: Kind, curlCode: Int, message: String, origin: String, underlying: (any Error)? = nil) {
        self.kind = kind
        self.curlCode = curlCode
        self.message = message
        self.origin = origin
        self.underlying = underlying
    }

    public var description: String {
        var s = "\(message) (\(origin), curl error \(curlCode))"
        if let underlying { s += ": \(underlying)" }
        return s
    }
}

/// Counters of the transport, cumulative since creation.
public struct HTTPClientStats: Sendable {
    public var requests: Int = 0
    public var bytesReceived: Int64 = 0
    public var bytesSent: Int64 = 0
    /// Bytes of file bodies read with O_DIRECT (the rest of a file body was read through the page cache).
    public var bytesReadDirect: Int64 = 0
}

/// An HTTP client for many concurrent requests. Create one per process and share it.
public final class HTTPClient: Sendable {
    public let configuration: HTTPClientConfiguration
    private let loops: [CurlLoop]

    public init(configuration: HTTPClientConfiguration = .init()) {
        self.configuration = configuration
        var c = configuration
        c.maxConnections = max(1, configuration.maxConnections / max(1, configuration.eventLoops))
        self.loops = (0..<max(1, configuration.eventLoops)).map { _ in CurlLoop(configuration: c) }
    }

    deinit { loops.forEach { $0.shutdown() } }

    /// The loop with the fewest transfers in flight.
    private func pickLoop() -> CurlLoop {
        loops.min { $0.load.load(ordering: .relaxed) < $1.load.load(ordering: .relaxed) }!
    }

    /// Sends `request` and returns its response. With a `sink`, the body of a 2xx response is written to
    /// it instead of being kept in memory; error bodies are always kept (they carry the S3 error).
    public func execute(_ request: HTTPRequest, sink: HTTPBodySink? = nil) async throws -> HTTPResponse {
        let transfer = Transfer(request: request, sink: sink, configuration: configuration)
        let loop = pickLoop()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (cont: CheckedContinuation<HTTPResponse, any Error>) in
                transfer.continuation = cont
                loop.submit(transfer)
            }
        } onCancel: {
            transfer.cancelled.store(true, ordering: .relaxed)
            loop.wake()
        }
    }

    public var stats: HTTPClientStats {
        loops.reduce(into: HTTPClientStats()) { total, loop in
            let s = loop.stats.withLock { $0 }
            total.requests += s.requests
            total.bytesReceived += s.bytesReceived
            total.bytesSent += s.bytesSent
            total.bytesReadDirect += s.bytesReadDirect
        }
    }

    /// The libcurl and TLS library versions in use.
    public static var libraryVersions: String {
        "libcurl/\(String(cString: ckpt_curl_version())) \(String(cString: ckpt_curl_ssl_version()))"
    }
}

/// One request in flight. After submission it is touched only by the transport thread, except for
/// `cancelled`, which is atomic.
final class Transfer: @unchecked Sendable {
    let request: HTTPRequest
    let sink: HTTPBodySink?
    let configuration: HTTPClientConfiguration
    let cancelled = Atomic<Bool>(false)
    var continuation: CheckedContinuation<HTTPResponse, any Error>?

    var easy: UnsafeMutableRawPointer?
    var headerList: UnsafeMutablePointer<curl_slist>?
    /// libcurl writes its error text here while the transfer runs, so it must have a stable address.
    let errorBuffer: UnsafeMutablePointer<CChar> = {
        let p = UnsafeMutablePointer<CChar>.allocate(capacity: Int(CURL_ERROR_SIZE) + 1)
        p.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)
        return p
    }()
    var status = 0
    var headers: [(name: String, value: String)] = []
    var body: [UInt8] = []
    var received: Int64 = 0
    var uploadPosition: Int64 = 0
    /// An O_DIRECT descriptor of a file body (opened at its first aligned read), -1 before, -2 once refused.
    var directFd: Int32 = -1
    var bytesReadDirect: Int64 = 0
    var failure: HTTPTransportError.Kind?
    var sinkError: (any Error)?

    init(request: HTTPRequest, sink: HTTPBodySink?, configuration: HTTPClientConfiguration) {
        self.request = request
        self.sink = sink
        self.configuration = configuration
    }

    deinit {
        errorBuffer.deallocate()
        if directFd >= 0 { close(directFd) }
    }

    /// Reads up to `count` bytes of the file body at `position` into `into` (libcurl's buffer, `capacity`
    /// bytes) with O_DIRECT, if the buffer, the file offset and the read rounded up to 4 KiB allow it and the
    /// file system takes it. nil: read it the ordinary way (a refusal turns direct reads off for the transfer).
    func readDirect(_ fd: Int32, at position: Int64, into: UnsafeMutableRawPointer, count: Int, capacity: Int) -> Int? {
        let page = 4096
        let rounded = (count + page - 1) / page * page
        guard directFd != -2, count >= page, position % Int64(page) == 0, Int(bitPattern: into) % page == 0,
              rounded <= capacity else { return nil }
        if directFd == -1 {
            // The same file, opened again with O_DIRECT (the caller's descriptor keeps its page-cache reads).
            let d = open("/proc/self/fd/\(fd)", O_RDONLY | FileDescriptor.OpenOptions.direct.rawValue | O_CLOEXEC)
            directFd = d >= 0 ? d : -2
            if d < 0 { return nil }
        }
        var got: Int
        repeat { got = pread(directFd, into, rounded, off_t(position)) } while got < 0 && errno == EINTR
        guard got > 0 else {
            if got < 0 {  // EINVAL: alignment the file system does not take; read the ordinary way from now on
                close(directFd)
                directFd = -2
            }
            return nil
        }
        let n = min(got, count)
        bytesReadDirect += Int64(n)
        return n
    }

    var origin: String {
        // scheme://host[:port] only.
        guard let schemeEnd = request.url.range(of: "://") else { return request.url }
        let rest = request.url[schemeEnd.upperBound...]
        let hostEnd = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) ?? rest.endIndex
        return String(request.url[..<hostEnd])
    }
}

/// The transport thread and its multi handle.
final class CurlLoop: @unchecked Sendable {
    private let multi: UnsafeMutableRawPointer
    private let pending = Mutex<[Transfer]>([])
    private let stopping = Atomic<Bool>(false)
    private let finished = Atomic<Bool>(false)
    let stats = Mutex(HTTPClientStats())
    /// Transfers submitted and not yet finished.
    let load = Atomic<Int>(0)
    // Touched only by the transport thread:
    private var active: [UnsafeMutableRawPointer: Transfer] = [:]
    private var idleHandles: [UnsafeMutableRawPointer] = []
    /// Idle easy handles kept for reuse. Each keeps what libcurl allocated for it until it is cleaned up: a
    /// 512 KiB receive buffer (CURLOPT_BUFFERSIZE) and, once it sent a body, a 1 MiB upload buffer. With no
    /// bound, a burst of transfers left 132 handles and 66 MiB of receive buffers in bench/load.py, over a
    /// third of the daemon's RSS. Connections are the multi handle's, not the easy handle's: a handle cleaned
    /// up loses no connection.
    static let maxIdleHandles = 16

    private static let globalInit: Void = { _ = ckpt_curl_global_init() }()

    init(configuration: HTTPClientConfiguration) {
        _ = CurlLoop.globalInit
        guard let m = curl_multi_init() else { fatalError("curl_multi_init failed") }
        multi = m
        _ = ckpt_curl_multi_setopt_long(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, configuration.maxConnections)
        _ = ckpt_curl_multi_setopt_long(m, CURLMOPT_MAXCONNECTS, configuration.maxConnections)
        let thread = Thread { [self] in self.run() }
        thread.name = "ckptfs-http"
        thread.stackSize = 1 << 20
        thread.start()
    }

    func submit(_ t: Transfer) {
        load.wrappingAdd(1, ordering: .relaxed)
        pending.withLock { $0.append(t) }
        curl_multi_wakeup(multi)
    }

    func wake() { curl_multi_wakeup(multi) }

    func shutdown() {
        stopping.store(true, ordering: .releasing)
        curl_multi_wakeup(multi)
    }

    private func run() {
        while true {
            let new = pending.withLock { p -> [Transfer] in
                let n = p
                p.removeAll()
                return n
            }
            for t in new { start(t) }
            if stopping.load(ordering: .acquiring) && active.isEmpty && pending.withLock({ $0.isEmpty }) { break }
            var running: Int32 = 0
            _ = curl_multi_perform(multi, &running)
            var queued: Int32 = 0
            while let msg = curl_multi_info_read(multi, &queued) {
                if ckpt_curl_msg_is_done(msg) != 0, let easy = ckpt_curl_msg_easy(msg) {
                    finish(easy: easy, result: ckpt_curl_msg_result(msg))
                }
            }
            _ = curl_multi_poll(multi, nil, 0, active.isEmpty ? 1000 : 100, nil)
        }
        for h in idleHandles { curl_easy_cleanup(h) }
        curl_multi_cleanup(multi)
        finished.store(true, ordering: .releasing)
    }

    private func start(_ t: Transfer) {
        if t.cancelled.load(ordering: .relaxed) {
            complete(t, .failure(HTTPTransportError(kind: .cancelled, curlCode: 42, message: "request cancelled", origin: t.origin)))
            return
        }
        let easy = idleHandles.popLast() ?? curl_easy_init()!
        t.easy = easy
        if let error = configure(easy, t) {
            curl_easy_reset(easy)
            idleHandles.append(easy)
            complete(t, .failure(error))
            return
        }
        active[easy] = t
        curl_multi_add_handle(multi, easy)
    }

    private func configure(_ h: UnsafeMutableRawPointer, _ t: Transfer) -> HTTPTransportError? {
        let c = t.configuration
        let r = t.request
        var rc = ckpt_curl_setopt_str(h, CURLOPT_URL, r.url)
        if rc != CURLE_OK {
            return HTTPTransportError(kind: .other, curlCode: Int(rc.rawValue), message: "invalid URL", origin: t.origin)
        }
        _ = ckpt_curl_setopt_long(h, CURLOPT_NOSIGNAL, 1)
        _ = ckpt_curl_setopt_long(h, CURLOPT_PATH_AS_IS, 1)  // keys may contain "." and ".." segments
        _ = ckpt_curl_setopt_long(h, CURLOPT_CONNECTTIMEOUT_MS, Int(c.connectTimeout.milliseconds))
        _ = ckpt_curl_setopt_long(h, CURLOPT_LOW_SPEED_LIMIT, 1)
        _ = ckpt_curl_setopt_long(h, CURLOPT_LOW_SPEED_TIME, max(1, Int(c.stallTimeout.milliseconds / 1000)))
        _ = ckpt_curl_setopt_long(h, CURLOPT_TCP_KEEPALIVE, 1)
        _ = ckpt_curl_setopt_long(h, CURLOPT_FRESH_CONNECT, r.freshConnection ? 1 : 0)
        // Receive 512 KiB at a time for GETs (no more than a range asks for, in 64 KiB steps), 64 KiB for the
        // short answers of other requests; send 1 MiB at a time, or the body in 64 KiB steps when it is smaller.
        // libcurl allocates them per transfer, and the daemon's malloc maps blocks of 256 KiB and more on their
        // own (each page faulted in afresh): a small object's 512 KiB and 1 MiB buffers cost more than its body
        // (bench/README, small files).
        let receive = r.method == .GET ? min(512 << 10, CurlLoop.rangeLength(r.headers).map { Int(($0 + 65535) & ~65535) } ?? .max) : 64 << 10
        _ = ckpt_curl_setopt_long(h, CURLOPT_BUFFERSIZE, max(64 << 10, receive))
        _ = ckpt_curl_setopt_long(h, CURLOPT_UPLOAD_BUFFERSIZE, Int(min(1 << 20, max(64 << 10, (r.body.length + 65535) & ~65535))))
        _ = ckpt_curl_setopt_str(h, CURLOPT_USERAGENT, c.userAgent)
        _ = ckpt_curl_setopt_long(h, CURLOPT_SSL_VERIFYPEER, c.verifyTLS ? 1 : 0)
        _ = ckpt_curl_setopt_long(h, CURLOPT_SSL_VERIFYHOST, c.verifyTLS ? 2 : 0)
        if let ca = c.caBundle { _ = ckpt_curl_setopt_str(h, CURLOPT_CAINFO, ca) }
        _ = ckpt_curl_setopt_ptr(h, CURLOPT_ERRORBUFFER, t.errorBuffer)

        let length = r.body.length
        switch r.method {
        case .GET: _ = ckpt_curl_setopt_long(h, CURLOPT_HTTPGET, 1)
        case .HEAD: _ = ckpt_curl_setopt_long(h, CURLOPT_NOBODY, 1)
        case .PUT:
            _ = ckpt_curl_setopt_long(h, CURLOPT_UPLOAD, 1)
            _ = ckpt_curl_setopt_off(h, CURLOPT_INFILESIZE_LARGE, curl_off_t(length))
        case .POST:
            _ = ckpt_curl_setopt_long(h, CURLOPT_POST, 1)
            _ = ckpt_curl_setopt_off(h, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(length))
        case .DELETE: _ = ckpt_curl_setopt_str(h, CURLOPT_CUSTOMREQUEST, "DELETE")
        }

        var list: UnsafeMutablePointer<curl_slist>? = nil
        var sawContentType = false
        for (name, value) in r.headers {
            if name.lowercased() == "content-type" { sawContentType = true }
            list = curl_slist_append(list, "\(name): \(value)")
        }
        // No 100-continue round trip, no default Accept, and no form content type on POST.
        list = curl_slist_append(list, "Expect:")
        list = curl_slist_append(list, "Accept:")
        if !sawContentType && r.method == .POST { list = curl_slist_append(list, "Content-Type:") }
        t.headerList = list
        _ = ckpt_curl_setopt_slist(h, CURLOPT_HTTPHEADER, list)

        rc = ckpt_curl_set_callbacks(h, CurlLoop.writeCallback, CurlLoop.readCallback, CurlLoop.headerCallback,
                                     CurlLoop.seekCallback, CurlLoop.progressCallback,
                                     Unmanaged.passUnretained(t).toOpaque())
        if rc != CURLE_OK {
            return HTTPTransportError(kind: .other, curlCode: Int(rc.rawValue), message: "libcurl refused a callback", origin: t.origin)
        }
        return nil
    }

    /// The length of the byte range a `Range: bytes=FIRST-LAST` header asks for (RFC 9110 14.1.2), or nil for any
    /// other form (several ranges, a suffix, an open end) or none.
    static func rangeLength(_ headers: [(String, String)]) -> Int64? {
        guard let v = headers.first(where: { $0.0.lowercased() == "range" })?.1, v.hasPrefix("bytes=") else { return nil }
        let parts = v.dropFirst(6).split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 2, let a = Int64(parts[0]), let b = Int64(parts[1]), b >= a else { return nil }
        return b - a + 1
    }

    private func finish(easy: UnsafeMutableRawPointer, result: CURLcode) {
        curl_multi_remove_handle(multi, easy)
        guard let t = active.removeValue(forKey: easy) else {
            curl_easy_cleanup(easy)
            return
        }
        var sent: curl_off_t = 0
        _ = ckpt_curl_getinfo_off(easy, CURLINFO_SIZE_UPLOAD_T, &sent)
        if let list = t.headerList { curl_slist_free_all(list) }
        t.headerList = nil
        let message = String(cString: t.errorBuffer)
        curl_easy_reset(easy)
        if idleHandles.count < CurlLoop.maxIdleHandles { idleHandles.append(easy) } else { curl_easy_cleanup(easy) }
        t.easy = nil
        stats.withLock {
            $0.requests += 1
            $0.bytesReceived += t.received
            $0.bytesSent += Int64(sent)
            $0.bytesReadDirect += t.bytesReadDirect
        }
        if result == CURLE_OK {
            complete(t, .success(HTTPResponse(status: t.status, headers: t.headers, body: t.body, bodyLength: t.received)))
        } else {
            complete(t, .failure(CurlLoop.error(result, message: message, transfer: t)))
        }
    }

    private func complete(_ t: Transfer, _ result: Result<HTTPResponse, HTTPTransportError>) {
        load.wrappingSubtract(1, ordering: .relaxed)
        let cont = t.continuation
        t.continuation = nil
        switch result {
        case .success(let r): cont?.resume(returning: r)
        case .failure(let e): cont?.resume(throwing: e)
        }
    }

    static func error(_ code: CURLcode, message: String, transfer t: Transfer) -> HTTPTransportError {
        let kind: HTTPTransportError.Kind
        if let k = t.failure {
            kind = k
        } else {
            switch code {
            case CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_RESOLVE_PROXY: kind = .resolve
            case CURLE_COULDNT_CONNECT: kind = .connect
            case CURLE_OPERATION_TIMEDOUT: kind = .timeout
            case CURLE_PARTIAL_FILE: kind = .partialBody
            case CURLE_SEND_ERROR, CURLE_RECV_ERROR, CURLE_GOT_NOTHING, CURLE_HTTP2, CURLE_HTTP2_STREAM: kind = .connectionReset
            case CURLE_SSL_CONNECT_ERROR, CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CERTPROBLEM, CURLE_SSL_CIPHER,
                 CURLE_SSL_CACERT_BADFILE, CURLE_SSL_ISSUER_ERROR, CURLE_SSL_PINNEDPUBKEYNOTMATCH,
                 CURLE_SSL_INVALIDCERTSTATUS, CURLE_SSL_CRL_BADFILE:
                kind = .tls
            case CURLE_ABORTED_BY_CALLBACK: kind = .cancelled
            case CURLE_READ_ERROR: kind = .bodyReadFailed
            default: kind = .other
            }
        }
        let text = message.isEmpty ? String(cString: curl_easy_strerror(code)) : message
        return HTTPTransportError(kind: kind, curlCode: Int(code.rawValue), message: text, origin: t.origin, underlying: t.sinkError)
    }

    // MARK: libcurl callbacks (C function pointers, no captures; the transfer comes from user data)

    static let writeCallback: ckpt_curl_data_cb = { ptr, size, nmemb, ud in
        let t = Unmanaged<Transfer>.fromOpaque(ud!).takeUnretainedValue()
        let n = size * nmemb
        let bytes = UnsafeRawBufferPointer(start: ptr, count: n)
        if let sink = t.sink, (200..<300).contains(t.status) {
            do {
                try sink(t.received, bytes)
            } catch {
                t.sinkError = error
                t.failure = .sinkFailed
                return 0
            }
        } else {
            let limit = (200..<300).contains(t.status) ? t.configuration.maxInMemoryBody : 1 << 20
            if t.body.count + n > limit {
                t.failure = .bodyTooLarge
                return 0
            }
            t.body.append(contentsOf: bytes)
        }
        t.received += Int64(n)
        return n
    }

    static let headerCallback: ckpt_curl_data_cb = { ptr, size, nmemb, ud in
        let t = Unmanaged<Transfer>.fromOpaque(ud!).takeUnretainedValue()
        let n = size * nmemb
        let bytes = UnsafeRawBufferPointer(start: ptr, count: n)
        if bytes.starts(with: "HTTP/".utf8) {
            // A new status line (after a 100 Continue, or the first): start the header set anew.
            let parts = String(decoding: bytes, as: UTF8.self).split(separator: " ", maxSplits: 2)
            t.status = parts.count > 1 ? Int(parts[1]) ?? 0 : 0
            t.headers.removeAll(keepingCapacity: true)
        } else if let colon = bytes.firstIndex(of: UInt8(ascii: ":")) {
            // name ":" OWS value OWS CRLF (RFC 9110 5.5: OWS is spaces and tabs). Parsed on the bytes:
            // Foundation's trimming (NSString on Linux) was 6% of the daemon's CPU per small GET.
            func isSpace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 || b == 0x0D || b == 0x0A }
            var lo = colon + 1
            var hi = n
            while lo < hi && isSpace(bytes[lo]) { lo += 1 }
            while hi > lo && isSpace(bytes[hi - 1]) { hi -= 1 }
            let name = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[..<colon]), as: UTF8.self).lowercased()
            let value = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[lo..<hi]), as: UTF8.self)
            t.headers.append((name: name, value: value))
        }
        return n
    }

    static let readCallback: ckpt_curl_data_cb = { ptr, size, nmemb, ud in
        let t = Unmanaged<Transfer>.fromOpaque(ud!).takeUnretainedValue()
        let capacity = size * nmemb
        let remaining = t.request.body.length - t.uploadPosition
        let n = Int(min(Int64(capacity), max(0, remaining)))
        if n == 0 { return 0 }
        switch t.request.body {
        case .empty: return 0
        case .bytes(let b):
            b.withUnsafeBytes { src in
                UnsafeMutableRawPointer(ptr!).copyMemory(from: src.baseAddress! + Int(t.uploadPosition), byteCount: n)
            }
            t.uploadPosition += Int64(n)
            return n
        case .file(let fd, let offset, _):
            if let got = t.readDirect(fd, at: offset + t.uploadPosition, into: UnsafeMutableRawPointer(ptr!), count: n, capacity: capacity) {
                t.uploadPosition += Int64(got)
                return got
            }
            // One pread (EINTR retried): libcurl asks again for the rest.
            let got = try? FileDescriptor(rawValue: fd).read(fromAbsoluteOffset: offset + t.uploadPosition,
                                                              into: UnsafeMutableRawBufferPointer(start: ptr, count: n))
            guard let got, got > 0 else {
                // A file that shrank or failed to read: abort rather than send a short body.
                t.failure = .bodyReadFailed
                return ckpt_curl_readfunc_abort()
            }
            t.uploadPosition += Int64(got)
            return got
        }
    }

    static let seekCallback: ckpt_curl_seek_cb = { ud, offset, origin in
        let t = Unmanaged<Transfer>.fromOpaque(ud!).takeUnretainedValue()
        guard origin == SEEK_SET, offset >= 0, offset <= t.request.body.length else { return ckpt_curl_seekfunc_fail() }
        t.uploadPosition = Int64(offset)
        return ckpt_curl_seekfunc_ok()
    }

    static let progressCallback: ckpt_curl_xferinfo_cb = { ud, _, _, _, _ in
        let t = Unmanaged<Transfer>.fromOpaque(ud!).takeUnretainedValue()
        if t.cancelled.load(ordering: .relaxed) {
            t.failure = .cancelled
            return 1
        }
        return 0
    }
}

extension Duration {
    var milliseconds: Int64 { components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000 }
}
