import FlyingFox
import Foundation
import Synchronization

/// Where `--metrics-address` listens: an IPv4 or IPv6 address and a TCP port.
struct MetricsAddress: Sendable, Equatable, CustomStringConvertible {
    /// An IP address in text form ("127.0.0.1", "::1", "0.0.0.0").
    var host: String
    var port: UInt16

    var isIPv6: Bool { host.contains(":") }

    /// `HOST:PORT` or `[IPV6]:PORT`. HOST is an IP address or `localhost`; `PORT` alone (or `:PORT`) means
    /// 127.0.0.1, so the metrics stay on loopback unless an address says otherwise. Port 0 picks a free port
    /// (`ckptfs status` shows which). Anything else fails with the reason.
    static func parse(_ text: String) -> Result<MetricsAddress, MetricsAddressError> {
        var host = "127.0.0.1"
        var portText = text
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                return .failure(.init(reason: "an IPv6 address is written in brackets with a port: [::1]:9464"))
            }
            host = String(text[text.index(after: text.startIndex)..<close])
            portText = String(text[text.index(close, offsetBy: 2)...])
        } else if let colon = text.lastIndex(of: ":") {
            let h = String(text[..<colon])
            guard !h.contains(":") else {
                return .failure(.init(reason: "write an IPv6 address in brackets: [::1]:9464"))
            }
            if !h.isEmpty { host = h == "localhost" ? "127.0.0.1" : h }
            portText = String(text[text.index(after: colon)...])
        }
        guard let port = UInt16(portText) else {
            return .failure(.init(reason: "'\(portText)' is not a TCP port (0 to 65535)"))
        }
        var probe = in6_addr()
        guard inet_pton(host.contains(":") ? AF_INET6 : AF_INET, host, &probe) == 1 else { return .failure(.init(reason: "'\(host)' is not an IP address (write 127.0.0.1, 0.0.0.0, [::1] or localhost)")) }
        return .success(MetricsAddress(host: host, port: port))
    }

    var description: String { isIPv6 ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// Why a `--metrics-address` value cannot be used.
struct MetricsAddressError: Error, Sendable {
    var reason: String
}

/// The HTTP endpoint of the metrics: GET /metrics answers the Prometheus text of `render()`; every other path is
/// 404. FlyingFox runs it on its own socket event queue (its poll waits on a dispatch queue, not on the Swift
/// concurrency pool); `render` runs per scrape.
final class MetricsServer: Sendable {
    let address: MetricsAddress
    private let server: HTTPServer
    private let task: Task<Void, any Error>

    /// Binds `address` and starts serving; throws when the address cannot be bound (in use, not an address of
    /// this machine), naming it and the fix.
    init(address: MetricsAddress, render: @escaping @Sendable () -> [UInt8]) async throws(UserFacingFailure) {
        let server: HTTPServer
        do {
            if address.isIPv6 {
                server = HTTPServer(address: try .inet6(ip6: address.host, port: address.port), logger: .disabled)
            } else {
                server = HTTPServer(address: try .inet(ip4: address.host, port: address.port), logger: .disabled)
            }
        } catch {
            throw UserFacingFailure(message: "--metrics-address \(address): \(error)\n  fix: give an IP address of this machine and a port")
        }
        await server.appendRoute("GET /metrics") { _ in
            HTTPResponse(statusCode: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"], body: Data(render()))
        }
        let task = Task { try await server.run() }
        // Listening, or the error of run() (the bind) if that comes first. The watcher of run() outlives this
        // (it ends when the server stops), so the race is settled by whichever reports first, not by a task group.
        let failure: (any Error)? = await withCheckedContinuation { (done: CheckedContinuation<(any Error)?, Never>) in
            let once = Mutex<CheckedContinuation<(any Error)?, Never>?>(done)
            let finish: @Sendable ((any Error)?) -> Void = { error in once.withLock { $0.take() }?.resume(returning: error) }
            Task {
                do { try await server.waitUntilListening(timeout: 10) } catch { finish(error) }
                finish(nil)
            }
            Task {
                do { try await task.value } catch { finish(error) }
                finish(CancellationError())
            }
        }
        if let failure {
            task.cancel()
            throw UserFacingFailure(message: "cannot serve metrics on \(address): \(failure)\n"
                + "  fix: choose a free port (--metrics-address 127.0.0.1:PORT), or stop what listens on \(address.port)")
        }
        self.address = address
        self.server = server
        self.task = task
    }

    /// The port the server listens on (the one chosen for port 0).
    func boundPort() async -> UInt16? {
        switch await server.listeningAddress {
        case .ip4(_, let port), .ip6(_, let port): return port
        default: return nil
        }
    }

    func stop() async {
        await server.stop(timeout: 1)
        task.cancel()
    }
}
