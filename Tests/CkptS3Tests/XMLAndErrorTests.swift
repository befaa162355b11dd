import CkptHTTP
@testable import CkptS3
import XCTest

final class XMLTests: XCTestCase {
    func testListObjectsV2PageWithURLEncodedKeys() throws {
        let body = """
        <?xml version="1.0" encoding="UTF-8"?>
        <ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
          <Name>b</Name><Prefix>p%2F</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys>
          <EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>
          <NextContinuationToken>tok+en/==</NextContinuationToken>
          <Contents><Key>p/a+b%2Bc%20d</Key><LastModified>2024-05-01T12:34:56.789Z</LastModified>
            <ETag>&quot;abc&quot;</ETag><Size>12345</Size><StorageClass>STANDARD</StorageClass></Contents>
          <Contents><Key>p/%E3%83%95</Key><LastModified>2024-05-01T12:34:56Z</LastModified><ETag>"d-2"</ETag><Size>0</Size></Contents>
          <CommonPrefixes><Prefix>p/dir%20x/</Prefix></CommonPrefixes>
        </ListBucketResult>
        """
        let root = try XML.parse(body)
        XCTAssertEqual(root.name, "ListBucketResult")
        let decode = S3Client.keyDecoder(root)
        let keys = root.all("Contents").map { decode($0.string("Key")!) }
        XCTAssertEqual(keys, ["p/a b+c d", "p/フ"])
        XCTAssertEqual(root.all("Contents")[0].string("ETag"), "\"abc\"")
        XCTAssertEqual(root.all("CommonPrefixes").map { decode($0.string("Prefix")!) }, ["p/dir x/"])
        let d = S3Date.parseISO8601("2024-05-01T12:34:56.789Z")!
        XCTAssertEqual(d.timeIntervalSince1970, 1_714_566_896.789, accuracy: 0.0001)
    }

    func testEntitiesCDATAAndComments() throws {
        let root = try XML.parse("<?xml version='1.0'?><!-- c --><a x='1&amp;2'><b>&lt;&#65;&#x42;&gt;<![CDATA[<raw&>]]></b><c/><!-- d --></a>")
        XCTAssertEqual(root.attributes["x"], "1&2")
        XCTAssertEqual(root.string("b"), "<AB><raw&>")
        XCTAssertEqual(root.child("c")?.text, "")
    }

    func testMalformedIsRejected() {
        for bad in ["", "<a>", "<a></b>", "<a>&bogus;</a>", "<a></a><b/>", "text"] {
            XCTAssertThrowsError(try XML.parse(bad), "should reject \(bad)")
        }
    }

    func testMultipartAndVersionsDocuments() throws {
        let parts = try XML.parse("""
            <ListPartsResult><Bucket>b</Bucket><Key>k</Key><UploadId>u</UploadId><IsTruncated>false</IsTruncated>
            <Part><PartNumber>1</PartNumber><ETag>"e1"</ETag><Size>5242880</Size></Part>
            <Part><PartNumber>2</PartNumber><ETag>"e2"</ETag><Size>17</Size></Part></ListPartsResult>
            """)
        XCTAssertEqual(parts.all("Part").compactMap { $0.string("Size").flatMap(Int64.init) }, [5_242_880, 17])
        let escaped = XML.escape("a<b>&\"c'")
        XCTAssertEqual(try XML.parse("<k>\(escaped)</k>").text, "a<b>&\"c'")
    }
}

final class S3ErrorTests: XCTestCase {
    func response(_ status: Int, _ body: String, headers: [(name: String, value: String)] = []) -> HTTPResponse {
        HTTPResponse(status: status, headers: headers, body: Array(body.utf8))
    }

    func testErrorBodyIsParsedIntoATypedError() {
        let e = S3Error.from(response: response(403, """
            <?xml version="1.0" encoding="UTF-8"?><Error><Code>SignatureDoesNotMatch</Code>
            <Message>The request signature we calculated does not match</Message><RequestId>REQ123</RequestId></Error>
            """), operation: "GetObject", bucket: "b", key: "k")
        XCTAssertEqual(e.code, .signatureDoesNotMatch)
        XCTAssertEqual(e.requestId, "REQ123")
        XCTAssertFalse(e.isRetryable)
        XCTAssertTrue(e.description.contains("SignatureDoesNotMatch"))
        XCTAssertTrue(e.description.contains("AWS_SECRET_ACCESS_KEY"), "the message says what to fix")
        XCTAssertTrue(e.description.contains("REQ123"))
    }

    func testBodilessResponsesMapByStatusAndOperation() {
        XCTAssertEqual(S3Error.from(response: response(404, ""), operation: "HeadBucket", bucket: "b", key: nil).code, .noSuchBucket)
        XCTAssertEqual(S3Error.from(response: response(404, ""), operation: "HeadObject", bucket: "b", key: "k").code, .noSuchKey)
        XCTAssertEqual(S3Error.from(response: response(412, ""), operation: "HeadObject", bucket: "b", key: "k").code, .preconditionFailed)
        let redirect = S3Error.from(response: response(301, "", headers: [("x-amz-bucket-region", "eu-central-1")]),
                                    operation: "HeadBucket", bucket: "b", key: nil)
        XCTAssertEqual(redirect.code, .permanentRedirect)
        XCTAssertTrue(redirect.description.contains("--region eu-central-1"))
    }

    func testRetryableClassification() {
        for (code, status) in [("SlowDown", 503), ("InternalError", 500), ("ServiceUnavailable", 503), ("RequestTimeout", 400), ("Whatever", 502),
                               ("BadDigest", 400), ("XAmzContentSHA256Mismatch", 400)] {
            let e = S3Error.from(response: response(status, "<Error><Code>\(code)</Code></Error>"), operation: "PutObject", bucket: "b", key: "k")
            XCTAssertTrue(e.isRetryable, code)
        }
        for (code, status) in [("NoSuchKey", 404), ("AccessDenied", 403), ("InvalidAccessKeyId", 403), ("PreconditionFailed", 412),
                               ("NoSuchBucket", 404), ("InvalidPart", 400)] {
            let e = S3Error.from(response: response(status, "<Error><Code>\(code)</Code></Error>"), operation: "PutObject", bucket: "b", key: "k")
            XCTAssertFalse(e.isRetryable, code)
        }
        for kind: HTTPTransportError.Kind in [.connect, .timeout, .partialBody, .connectionReset] {
            XCTAssertTrue(S3Error.transportFailure(HTTPTransportError(kind: kind, curlCode: 0, message: "", origin: ""),
                                                   operation: "GetObject", bucket: nil, key: nil).isRetryable)
        }
        for kind: HTTPTransportError.Kind in [.resolve, .tls, .cancelled, .sinkFailed] {
            XCTAssertFalse(S3Error.transportFailure(HTTPTransportError(kind: kind, curlCode: 0, message: "", origin: ""),
                                                    operation: "GetObject", bucket: nil, key: nil).isRetryable)
        }
    }
}

final class RetryPolicyTests: XCTestCase {
    func testCappedExponentialCeilingAndFullJitter() {
        let p = RetryPolicy(maxAttempts: 8, baseDelay: .milliseconds(100), maxDelay: .seconds(2))
        XCTAssertEqual(p.ceiling(afterAttempt: 1), .milliseconds(100))
        XCTAssertEqual(p.ceiling(afterAttempt: 2), .milliseconds(200))
        XCTAssertEqual(p.ceiling(afterAttempt: 4), .milliseconds(800))
        XCTAssertEqual(p.ceiling(afterAttempt: 6), .seconds(2), "capped")
        XCTAssertEqual(p.ceiling(afterAttempt: 60), .seconds(2), "no overflow")
        XCTAssertEqual(p.delay(afterAttempt: 3, random: 0), .zero)
        XCTAssertEqual(p.delay(afterAttempt: 3, random: 0.5), .milliseconds(200))
        XCTAssertEqual(p.delay(afterAttempt: 3, random: 1), .milliseconds(400))
        let waits = (0..<200).map { _ in p.delay(afterAttempt: 3) }
        XCTAssertTrue(waits.allSatisfy { $0 >= .zero && $0 <= .milliseconds(400) })
        XCTAssertGreaterThan(Set(waits).count, 100, "jittered")
    }

    func testAttemptLimit() {
        let p = RetryPolicy(maxAttempts: 3)
        let e = S3Error(code: .slowDown, s3Code: "SlowDown", message: "", httpStatus: 503, operation: "GetObject")
        XCTAssertTrue(p.shouldRetry(e, attempt: 1))
        XCTAssertTrue(p.shouldRetry(e, attempt: 2))
        XCTAssertFalse(p.shouldRetry(e, attempt: 3))
        XCTAssertFalse(p.shouldRetry(S3Error(code: .noSuchKey, s3Code: "NoSuchKey", message: "", httpStatus: 404, operation: "GetObject"), attempt: 1))
    }
}
