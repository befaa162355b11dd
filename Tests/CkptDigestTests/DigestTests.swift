import CkptDigest
import XCTest

final class DigestTests: XCTestCase {
    func testSHA256KnownAnswers() {
        XCTAssertEqual(Digest.sha256([UInt8]()).hexString, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(Digest.sha256("abc").hexString, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    func testStreamingEqualsOneShot() {
        let data = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        var d = StreamingDigest(.sha256)
        var i = 0
        while i < data.count {
            let n = min(977, data.count - i)
            d.update(Array(data[i..<i + n]))
            i += n
        }
        let streamed = d.finalize()
        XCTAssertEqual(streamed, Digest.sha256(data))
    }

    func testMD5KnownAnswer() {
        XCTAssertEqual(Digest.md5(Array("The quick brown fox jumps over the lazy dog".utf8)).hexString,
                       "9e107d9d372bb6826bd81d3542a419d6")
    }

    func testSHA1KnownAnswers() {
        XCTAssertEqual(Digest.sha1("The quick brown fox jumps over the lazy dog").hexString, "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12")
        XCTAssertEqual(Digest.sha1("").hexString, "da39a3ee5e6b4b0d3255bfef95601890afd80709")
    }

    func testHMACSHA256RFC4231Case2() {
        let mac = Digest.hmacSHA256(key: Array("Jefe".utf8), string: "what do ya want for nothing?")
        XCTAssertEqual(mac.hexString, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    }

    func testBase64() {
        XCTAssertEqual(Array("".utf8).base64String, "")
        XCTAssertEqual(Array("f".utf8).base64String, "Zg==")
        XCTAssertEqual(Array("fo".utf8).base64String, "Zm8=")
        XCTAssertEqual(Array("foo".utf8).base64String, "Zm9v")
        XCTAssertEqual(Array("foobar".utf8).base64String, "Zm9vYmFy")
    }
}

final class CRC32CTests: XCTestCase {
    /// The check value of the CRC catalogue and the test vectors of RFC 3720, appendix B.4.
    func testKnownAnswers() {
        XCTAssertEqual(CRC32C.checksum([UInt8]()), 0)
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)), 0x62A8_AB43)
        XCTAssertEqual(CRC32C.checksum((0..<32).map { UInt8($0) }), 0x46DD_794E)
        XCTAssertEqual(CRC32C.checksum((0..<32).map { UInt8(31 - $0) }), 0x113F_DB5C)
    }

    func testStreamingInAnyPiecesEqualsOneShot() {
        let data = (0..<100_003).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
        for piece in [1, 7, 4096, 65_537] {
            var c = CRC32C()
            var i = 0
            while i < data.count {
                let n = min(piece, data.count - i)
                c.update(Array(data[i..<i + n]))
                i += n
            }
            XCTAssertEqual(c.value, CRC32C.checksum(data), "pieces of \(piece)")
        }
    }

    /// S3's form: the 4 bytes big-endian, base64 (S3 API reference, x-amz-checksum-crc32c).
    func testS3String() {
        XCTAssertEqual(CRC32C.s3String(0), "AAAAAA==")
        XCTAssertEqual(CRC32C.s3String(0xE306_9283), "4waSgw==")
    }
}

final class XXH64Tests: XCTestCase {
    /// Reference values from the `xxhash` package (the C implementation).
    func testKnownAnswers() {
        XCTAssertEqual(XXH64.hash([UInt8]()), 0xEF46_DB37_51D8_E999)
        XCTAssertEqual(XXH64.hash(Array("a".utf8)), 0xD24E_C4F1_A98C_6E5B)
        XCTAssertEqual(XXH64.hash(Array("abc".utf8)), 0x44BC_2CF5_AD77_0999)
        XCTAssertEqual(XXH64.hash((0..<1280).map { UInt8($0 % 256) }), 0xAFC1_84AD_7938_A354)
        XCTAssertEqual(XXH64.hash([UInt8](repeating: UInt8(ascii: "x"), count: 31)), 0x60DD_0D01_083B_99F0)
        XCTAssertEqual(XXH64.hash([UInt8](repeating: UInt8(ascii: "y"), count: 32)), 0x64DA_1F1D_3495_CE66)
        XCTAssertEqual(XXH64.hash([UInt8](repeating: UInt8(ascii: "z"), count: 33)), 0xC524_1253_C64E_0268)
    }

    func testStreamingInAnyPiecesEqualsOneShot() {
        let data = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
        let one = XXH64.hash(data)
        for piece in [1, 7, 31, 32, 33, 1000] {
            var x = XXH64()
            var i = 0
            while i < data.count {
                let n = min(piece, data.count - i)
                data[i..<i + n].withUnsafeBytes { x.update($0) }
                i += n
            }
            XCTAssertEqual(x.finalize(), one, "pieces of \(piece)")
        }
    }
}
