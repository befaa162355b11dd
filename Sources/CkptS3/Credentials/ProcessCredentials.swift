// credential_process: a command that prints credentials as JSON (Version 1).
//
// AWS docs "Sourcing credentials with an external process": the command prints
// {"Version": 1, "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}. With an Expiration the
// credentials are temporary and the command runs again before they expire (botocore's ProcessProvider).
import Foundation

public struct ProcessCredentialSource: CredentialSource {
    public let command: String
    public let profile: String

    public init(command: String, profile: String) {
        self.command = command
        self.profile = profile
    }

    public var name: String { "credential_process of profile \(profile)" }
    public var canRefresh: Bool { true }

    public func fetch() async throws(CredentialsError) -> Credentials {
        // The command blocks until it exits: run it on a thread of its own, not on Swift's cooperative pool.
        let result: Result<Credentials, CredentialsError> = await withCheckedContinuation { cont in
            Thread.detachNewThread {
                do throws(CredentialsError) { cont.resume(returning: .success(try self.run())) } catch { cont.resume(returning: .failure(error)) }
            }
        }
        return try result.get()
    }

    /// Runs the command and reads its JSON; blocks.
    public func run() throws(CredentialsError) -> Credentials {
        let fix = "run the command by hand to see why, or fix credential_process in the profile"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", command]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.standardError
        do { try p.run() } catch { throw CredentialsError(source: name, "could not start: \(error)", fix: fix) }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw CredentialsError(source: name, "exited with status \(p.terminationStatus)", fix: fix, isTransient: true)
        }
        guard let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let id = obj["AccessKeyId"] as? String, let secret = obj["SecretAccessKey"] as? String else {
            throw CredentialsError(source: name, "did not print JSON with AccessKeyId and SecretAccessKey", fix: fix)
        }
        return Credentials(accessKeyId: id, secretAccessKey: secret, sessionToken: obj["SessionToken"] as? String,
                           source: name, expiration: (obj["Expiration"] as? String).flatMap(S3Date.parseISO8601))
    }
}
