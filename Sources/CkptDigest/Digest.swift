// Hashes and MACs for signing, integrity checks and cache-block checksums.
//
// SHA-256, MD5 and HMAC-SHA256 come from OpenSSL (hardware-accelerated where the CPU allows) through the
// COpenSSL shim; CRC32C is computed here with a slice-by-8 table. Callers get value types and hex strings;
// no OpenSSL type leaks out of this module.
import COpenSSL
import Foundation

/// A digest algorithm provided by OpenSSL.
public enum DigestAlgorithm: Sendable {
    case sha256, md5

    var c: ckpt_digest_alg { self == .sha256 ? CKPT_DIGEST_SHA256 : CKPT_DIGEST_MD5 }
    /// Length of the digest in bytes.
    public var length: Int { self == .sha256 ? 32 : 16 }
}

/// A streaming digest (SHA-256 or MD5). Feed it with `update`, read it once with `finalize`.
public struct StreamingDigest: ~Copyable {
    private var ctx: UnsafeMutableRawPointer?
    public let algorithm: DigestAlgorithm

    public init(_ algorithm: DigestAlgorithm) {
        self.algorithm = algorithm
        guard let ctx = ckpt_digest_new(algorithm.c) else { fatalError("OpenSSL could not allocate a digest context") }
        self.ctx = ctx
    }

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        ckpt_digest_update(ctx, base, bytes.count)
    }

    public mutating func update<C: ContiguousBytes>(_ bytes: C) {
        bytes.withUnsafeBytes { update($0) }
    }

    public consuming func finalize() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: algorithm.length)
        out.withUnsafeMutableBufferPointer { _ = ckpt_digest_final_free(ctx, $0.baseAddress) }
        ctx = nil
        return out
    }

    deinit {
        if let ctx { ckpt_digest_free(ctx) }
    }
}

/// One-shot helpers.
public enum Digest {
    public static func sha256(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        var d = StreamingDigest(.sha256)
        d.update(bytes)
        return d.finalize()
    }

    public static func sha256<C: ContiguousBytes>(_ bytes: C) -> [UInt8] { bytes.withUnsafeBytes { sha256($0) } }

    public static func sha256(_ string: String) -> [UInt8] { sha256(Array(string.utf8)) }

    public static func md5<C: ContiguousBytes>(_ bytes: C) -> [UInt8] {
        var d = StreamingDigest(.md5)
        d.update(bytes)
        return d.finalize()
    }

    /// HMAC-SHA256 of `data` under `key`.
    public static func hmacSHA256(key: [UInt8], data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        key.withUnsafeBytes { k in
            data.withUnsafeBytes { d in
                out.withUnsafeMutableBufferPointer { o in
                    guard ckpt_hmac_sha256(k.baseAddress, k.count, d.baseAddress, d.count, o.baseAddress) == 1 else {
                        fatalError("OpenSSL HMAC-SHA256 failed")
                    }
                }
            }
        }
        return out
    }

    public static func hmacSHA256(key: [UInt8], string: String) -> [UInt8] { hmacSHA256(key: key, data: Array(string.utf8)) }
}

extension Sequence where Element == UInt8 {
    /// Lower-case hexadecimal, two characters a byte.
    public var hexString: String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(64)
        for b in self {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Standard base64 with padding (for Content-MD5 and checksum headers).
    public var base64String: String {
        let table = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        let bytes = Array(self)
        var out = [UInt8]()
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i + 2 < bytes.count {
            let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
            out += [table[Int(n >> 18 & 63)], table[Int(n >> 12 & 63)], table[Int(n >> 6 & 63)], table[Int(n & 63)]]
            i += 3
        }
        let rest = bytes.count - i
        if rest == 1 {
            let n = UInt32(bytes[i]) << 16
            out += [table[Int(n >> 18 & 63)], table[Int(n >> 12 & 63)], UInt8(ascii: "="), UInt8(ascii: "=")]
        } else if rest == 2 {
            let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8
            out += [table[Int(n >> 18 & 63)], table[Int(n >> 12 & 63)], table[Int(n >> 6 & 63)], UInt8(ascii: "=")]
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// CRC-32C (Castagnoli), the checksum S3 offers as `x-amz-checksum-crc32c` and the one cache blocks carry.
public enum CRC32C {
    private static let tables: [[UInt32]] = {
        var t = [[UInt32]](repeating: [UInt32](repeating: 0, count: 256), count: 8)
        for i in 0..<256 {
            var c = UInt32(i)
            for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
            t[0][i] = c
        }
        for i in 0..<256 {
            for k in 1..<8 { t[k][i] = (t[k - 1][i] >> 8) ^ t[0][Int(t[k - 1][i] & 0xff)] }
        }
        return t
    }()

    /// Continues a CRC over `bytes`; start with `crc: 0`.
    public static func update(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var c = ~crc
        let t = tables
        t.withUnsafeBufferPointer { tp in
            let t0 = tp[0], t1 = tp[1], t2 = tp[2], t3 = tp[3], t4 = tp[4], t5 = tp[5], t6 = tp[6], t7 = tp[7]
            var i = 0
            let n = bytes.count
            while i + 8 <= n {
                let lo = UInt32(bytes[i]) | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2]) << 16 | UInt32(bytes[i + 3]) << 24
                let hi = UInt32(bytes[i + 4]) | UInt32(bytes[i + 5]) << 8 | UInt32(bytes[i + 6]) << 16 | UInt32(bytes[i + 7]) << 24
                let x = c ^ lo
                c = t7[Int(x & 0xff)] ^ t6[Int(x >> 8 & 0xff)] ^ t5[Int(x >> 16 & 0xff)] ^ t4[Int(x >> 24)]
                    ^ t3[Int(hi & 0xff)] ^ t2[Int(hi >> 8 & 0xff)] ^ t1[Int(hi >> 16 & 0xff)] ^ t0[Int(hi >> 24)]
                i += 8
            }
            while i < n {
                c = t0[Int((c ^ UInt32(bytes[i])) & 0xff)] ^ (c >> 8)
                i += 1
            }
        }
        return ~c
    }

    public static func checksum<C: ContiguousBytes>(_ bytes: C) -> UInt32 { bytes.withUnsafeBytes { update(0, $0) } }
}
