import ArgumentParser
import Foundation

/// Prints a user-facing failure and exits non-zero.
struct UserFacingFailure: Error, Sendable, CustomStringConvertible {
    var message: String
    var code: Int32 = 1
    var description: String { message }
}

func fail(_ message: String, code: Int32 = 1) -> ExitCode {
    FileHandle.standardError.write(Data("ckptfs: error: \(message)\n".utf8))
    return ExitCode(code)
}
