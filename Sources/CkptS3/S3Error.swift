// Typed S3 errors with the server's code, message and request id, and a hint a user can act on.
import CkptHTTP

/// A failed S3 operation. `description` names the operation, the object, the cause and the fix;
/// it never contains credentials or signatures.
public struct S3Error: Error, Sendable, CustomStringConvertible {
    /// The failure, classified. `.other` keeps codes this client does not single out.
    public enum Code: Sendable, Equatable {
        case noSuchBucket, noSuchKey, noSuchUpload, noSuchVersion
        case accessDenied, invalidAccessKeyId, signatureDoesNotMatch, requestTimeTooSkewed, expiredToken
        case authorizationHeaderMalformed, permanentRedirect
        case preconditionFailed, conditionalRequestConflict, invalidRange, invalidPart, invalidPartOrder, entityTooSmall
        case badDigest, invalidRequest, bucketAlreadyOwnedByYou, bucketNotEmpty
        case slowDown, internalError, serviceUnavailable, requestTimeout
        /// No usable HTTP response: connection refused, DNS, TLS, timeout, reset, short body.
        case transport(TransportFailure)
        /// A response this client could not understand.
        case malformedResponse
        case other(String)

        init(s3Code: String, status: Int) {
            switch s3Code {
            case "NoSuchBucket": self = .noSuchBucket
            case "NoSuchKey": self = .noSuchKey
            case "NoSuchUpload": self = .noSuchUpload
            case "NoSuchVersion": self = .noSuchVersion
            case "AccessDenied", "AllAccessDisabled": self = .accessDenied
            case "InvalidAccessKeyId": self = .invalidAccessKeyId
            case "SignatureDoesNotMatch": self = .signatureDoesNotMatch
            case "RequestTimeTooSkewed": self = .requestTimeTooSkewed
            case "ExpiredToken", "TokenRefreshRequired": self = .expiredToken
            case "AuthorizationHeaderMalformed": self = .authorizationHeaderMalformed
            case "PermanentRedirect": self = .permanentRedirect
            case "PreconditionFailed": self = .preconditionFailed
            case "ConditionalRequestConflict": self = .conditionalRequestConflict
            case "InvalidRange": self = .invalidRange
            case "InvalidPart": self = .invalidPart
            case "InvalidPartOrder": self = .invalidPartOrder
            case "EntityTooSmall": self = .entityTooSmall
            case "BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch": self = .badDigest
            case "InvalidRequest": self = .invalidRequest
            case "BucketAlreadyOwnedByYou": self = .bucketAlreadyOwnedByYou
            case "BucketNotEmpty": self = .bucketNotEmpty
            case "SlowDown", "Throttling", "ThrottlingException", "TooManyRequests": self = .slowDown
            case "InternalError": self = .internalError
            case "ServiceUnavailable": self = .serviceUnavailable
            case "RequestTimeout": self = .requestTimeout
            default:
                switch status {
                case 500: self = .internalError
                case 503: self = .serviceUnavailable
                default: self = .other(s3Code)
                }
            }
        }
    }

    public var code: Code
    /// The code string as the server sent it (or a synthesized one for bodiless responses).
    public var s3Code: String
    public var message: String
    public var httpStatus: Int?
    public var requestId: String?
    public var operation: String
    public var bucket: String?
    public var key: String?
    /// The region the server says the bucket is in (x-amz-bucket-region), when it says so.
    public var bucketRegion: String?
    /// What the transport reported (libcurl's message and code, the endpoint), when there was no HTTP response.
    public var cause: (any Error)?
    /// How many attempts were made before giving up.
    public var attempts: Int = 1

    public init(code: Code, s3Code: String, message: String, httpStatus: Int? = nil, requestId: String? = nil,
                operation: String, bucket: String? = nil, key: String? = nil) {
        self.code = code
        self.s3Code = s3Code
        self.message = message
        self.httpStatus = httpStatus
        self.requestId = requestId
        self.operation = operation
        self.bucket = bucket
        self.key = key
    }

    /// Whether the same request may succeed later (server overload, internal errors, network trouble).
    public var isRetryable: Bool {
        switch code {
        case .slowDown, .internalError, .serviceUnavailable, .requestTimeout: return true
        // The body arrived damaged (its Content-MD5, checksum header or signed SHA-256 did not match what the
        // server received): the bytes are read and sent anew, so the same request may well succeed.
        case .badDigest: return true
        case .transport(let kind): return kind.isTransient
        case .other:
            if let s = httpStatus { return s == 500 || s == 502 || s == 503 || s == 504 || s == 429 }
            return false
        default: return false
        }
    }

    /// Whether S3 answered with a client error that the same request will get again: a 4xx status other than
    /// 408 (Request Timeout) and 429 (Too Many Requests), e.g. 400 InvalidRequest for a key the server cannot
    /// store, 403 AccessDenied. Only the user can change the outcome (another name, other permissions).
    public var isRefusal: Bool {
        guard let s = httpStatus, (400..<500).contains(s), s != 408, s != 429 else { return false }
        return !isRetryable
    }

    /// What the user can do about it.
    public var hint: String? {
        switch code {
        case .noSuchBucket:
            return "check the bucket name, and that the endpoint (--endpoint-url, AWS_ENDPOINT_URL) and region (--region, AWS_REGION) are the ones that hold it"
        case .noSuchKey: return nil
        case .accessDenied:
            return "the credentials in use lack permission for this bucket or key; check the IAM policy, or pick other credentials (--profile, AWS_PROFILE)"
        case .invalidAccessKeyId:
            return "the access key id is not known to the server; check AWS_ACCESS_KEY_ID or the profile's aws_access_key_id"
        case .signatureDoesNotMatch:
            return "the secret access key is wrong for this access key id; check AWS_SECRET_ACCESS_KEY or the profile's aws_secret_access_key"
        case .requestTimeTooSkewed:
            return "this machine's clock is too far from the server's; synchronize it (e.g. with NTP)"
        case .expiredToken:
            return "the session token has expired; refresh the temporary credentials (AWS_SESSION_TOKEN or the profile)"
        case .authorizationHeaderMalformed, .permanentRedirect:
            if let r = bucketRegion { return "the bucket is in region \(r); pass --region \(r) or set AWS_REGION=\(r)" }
            return "the bucket is in another region; pass --region or set AWS_REGION"
        case .transport(.resolve):
            return "the endpoint's host name does not resolve; check --endpoint-url / AWS_ENDPOINT_URL and DNS"
        case .transport(.connect):
            return "nothing answers at the endpoint; check --endpoint-url / AWS_ENDPOINT_URL and that the server is running"
        case .transport(.tls):
            return "the TLS handshake or certificate check failed; for a private CA set AWS_CA_BUNDLE to its PEM file"
        case .transport(.timeout):
            return "the server stopped answering; check the network and the server's load"
        case .slowDown, .serviceUnavailable:
            return "the server is overloaded; lower the request rate or try again later"
        default: return nil
        }
    }

    public var description: String {
        var target = ""
        if let bucket {
            target = " s3://\(bucket)"
            if let key { target += "/\(key)" }
        }
        var s = "\(operation)\(target) failed: "
        if let cause {
            s += "\(cause)"
        } else {
            s += s3Code
            if let httpStatus { s += " (HTTP \(httpStatus))" }
            if !message.isEmpty { s += ": \(message)" }
        }
        if attempts > 1 { s += " [after \(attempts) attempts]" }
        if let requestId, !requestId.isEmpty { s += " [request id \(requestId)]" }
        if let hint { s += "\n  fix: \(hint)" }
        return s
    }

    static func transportFailure(_ e: HTTPTransportError, operation: String, bucket: String?, key: String?) -> S3Error {
        var err = S3Error(code: .transport(TransportFailure(e.kind)), s3Code: "Transport", message: e.message,
                          operation: operation, bucket: bucket, key: key)
        err.cause = e
        return err
    }

    /// Builds the error from an HTTP response: from its XML body when there is one, else from the status.
    static func from(response r: HTTPResponse, operation: String, bucket: String?, key: String?) -> S3Error {
        let requestId = r.header("x-amz-request-id")
        if !r.body.isEmpty, let root = try? XML.parse(r.body), root.name == "Error" {
            var e = fromXML(root, status: r.status, operation: operation, bucket: bucket, key: key)
            e.requestId = e.requestId ?? requestId
            e.bucketRegion = r.header("x-amz-bucket-region") ?? root.string("Region")
            return e
        }
        // No body (HEAD) or not XML: derive from the status and the operation.
        let s3Code: String
        switch r.status {
        case 404:
            if operation == "HeadBucket" || key == nil { s3Code = "NoSuchBucket" } else { s3Code = "NoSuchKey" }
        case 403: s3Code = "AccessDenied"
        case 412: s3Code = "PreconditionFailed"
        case 416: s3Code = "InvalidRange"
        case 301: s3Code = "PermanentRedirect"
        case 400: s3Code = "BadRequest"
        case 409: s3Code = "Conflict"
        case 429: s3Code = "SlowDown"
        case 500: s3Code = "InternalError"
        case 503: s3Code = "ServiceUnavailable"
        default: s3Code = "HTTP\(r.status)"
        }
        var e = S3Error(code: Code(s3Code: s3Code, status: r.status), s3Code: s3Code,
                        message: r.header("x-amz-error-message") ?? "", httpStatus: r.status, requestId: requestId,
                        operation: operation, bucket: bucket, key: key)
        if let c = r.header("x-amz-error-code") {
            e.s3Code = c
            e.code = Code(s3Code: c, status: r.status)
        }
        e.bucketRegion = r.header("x-amz-bucket-region")
        return e
    }

    static func fromXML(_ root: XML.Node, status: Int, operation: String, bucket: String?, key: String?) -> S3Error {
        let c = root.string("Code") ?? "HTTP\(status)"
        return S3Error(code: Code(s3Code: c, status: status), s3Code: c, message: root.string("Message") ?? "",
                       httpStatus: status, requestId: root.string("RequestId"), operation: operation,
                       bucket: bucket, key: key)
    }

    static func malformed(_ what: String, operation: String, bucket: String?, key: String?) -> S3Error {
        S3Error(code: .malformedResponse, s3Code: "MalformedResponse", message: what, operation: operation,
                bucket: bucket, key: key)
    }
}

/// Why a request got no usable HTTP response (the S3 side of the transport's failure kinds).
public enum TransportFailure: Sendable, Equatable {
    /// The endpoint's host name did not resolve.
    case resolve
    /// Nothing accepted the connection.
    case connect
    /// The TLS handshake or the certificate check failed.
    case tls
    /// No byte moved for the stall timeout (`--request-timeout`), or connecting took too long.
    case timeout
    /// The body ended before its Content-Length.
    case partialBody
    /// The connection was closed or reset before a complete response.
    case connectionReset
    /// The task was cancelled.
    case cancelled
    /// The caller's body sink threw (e.g. a local disk error while writing a download).
    case sinkFailed
    /// The request body could not be read from its file (it shrank, or a read failed).
    case bodyReadFailed
    /// A response without a sink was larger than the transport keeps in memory.
    case bodyTooLarge
    case other

    init(_ kind: HTTPTransportError.Kind) {
        switch kind {
        case .resolve: self = .resolve
        case .connect: self = .connect
        case .tls: self = .tls
        case .timeout: self = .timeout
        case .partialBody: self = .partialBody
        case .connectionReset: self = .connectionReset
        case .cancelled: self = .cancelled
        case .sinkFailed: self = .sinkFailed
        case .bodyReadFailed: self = .bodyReadFailed
        case .bodyTooLarge: self = .bodyTooLarge
        case .other: self = .other
        }
    }

    /// Whether the same request may succeed if sent again.
    public var isTransient: Bool {
        switch self {
        case .connect, .timeout, .partialBody, .connectionReset: return true
        default: return false
        }
    }
}

/// When and how long to wait before sending a failed request again: capped exponential backoff with full jitter.
public struct RetryPolicy: Sendable {
    /// Attempts in all, including the first.
    public var maxAttempts: Int
    public var baseDelay: Duration
    public var maxDelay: Duration

    public init(maxAttempts: Int = 6, baseDelay: Duration = .milliseconds(100), maxDelay: Duration = .seconds(20)) {
        self.maxAttempts = maxAttempts
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
    }

    public static let none = RetryPolicy(maxAttempts: 1)

    /// The ceiling of the wait before attempt `attempt + 1` (attempt counts from 1): base·2^(attempt-1), capped.
    public func ceiling(afterAttempt attempt: Int) -> Duration {
        let exp = min(attempt - 1, 30)
        let base = Double(baseDelay.components.seconds) + Double(baseDelay.components.attoseconds) / 1e18
        let cap = Double(maxDelay.components.seconds) + Double(maxDelay.components.attoseconds) / 1e18
        return .nanoseconds(Int64(min(cap, base * pow2(exp)) * 1e9))
    }

    /// A random wait in [0, ceiling] ("full jitter"), so many clients that failed together do not retry together.
    public func delay(afterAttempt attempt: Int, random: Double = Double.random(in: 0...1)) -> Duration {
        let c = ceiling(afterAttempt: attempt)
        let ns = Double(c.components.seconds) * 1e9 + Double(c.components.attoseconds) / 1e9
        return .nanoseconds(Int64(ns * min(max(random, 0), 1)))
    }

    /// Whether to send again after `error` on attempt `attempt`.
    public func shouldRetry(_ error: S3Error, attempt: Int) -> Bool {
        attempt < maxAttempts && error.isRetryable
    }

    private func pow2(_ n: Int) -> Double { Double(1 << n) }
}
