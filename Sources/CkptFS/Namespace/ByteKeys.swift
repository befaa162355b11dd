// Tables keyed by names and object keys, compared as bytes.
//
// POSIX names and S3 keys are bytes; Swift's String is text: `==`, `hashValue` and `<` treat canonically
// equivalent text as one ("caf\u{e9}" == "cafe\u{301}"). Two such keys in S3 ("twins", made by another client)
// are two objects, and a table keyed by String mixed them: a lookup of one found the other's inode, a save
// through one went to the other's key. So every table of the mount keyed by a name or key is keyed by its
// bytes: `BytesDictionary` and `BytesSet` take and give Strings, and compare, hash and order them by their
// bytes of UTF-8 (S3 lists keys in that order).

/// A name or key compared, hashed and ordered by its bytes of UTF-8 (see the file comment).
struct ByteKey: Hashable, Comparable, Sendable, CustomStringConvertible {
    let text: String

    init(_ text: String) { self.text = text }

    static func == (a: ByteKey, b: ByteKey) -> Bool { a.text.sameBytes(b.text) }

    static func < (a: ByteKey, b: ByteKey) -> Bool { a.text.bytesPrecede(b.text) }

    func hash(into hasher: inout Hasher) {
        var t = text  // withUTF8 is mutating: a native String hands its storage over without a copy
        t.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
    }

    var description: String { text }
}

/// A dictionary keyed by names or keys compared as bytes (`ByteKey`), with Dictionary's API in Strings.
struct BytesDictionary<Value>: Sequence, ExpressibleByDictionaryLiteral {
    private var storage: [ByteKey: Value]

    init() { storage = [:] }

    init(dictionaryLiteral elements: (String, Value)...) {
        storage = Dictionary(elements.map { (ByteKey($0.0), $0.1) }, uniquingKeysWith: { _, last in last })
    }

    /// A dictionary of `pairs`; a later pair wins over an earlier one of the same key.
    init(_ pairs: some Sequence<(String, Value)>) {
        storage = Dictionary(pairs.map { (ByteKey($0.0), $0.1) }, uniquingKeysWith: { _, last in last })
    }

    private init(storage: [ByteKey: Value]) { self.storage = storage }

    subscript(key: String) -> Value? {
        get { storage[ByteKey(key)] }
        _modify { yield &storage[ByteKey(key)] }
    }

    subscript(key: String, default value: @autoclosure () -> Value) -> Value {
        get { storage[ByteKey(key), default: value()] }
        _modify { yield &storage[ByteKey(key), default: value()] }
    }

    var count: Int { storage.count }
    var isEmpty: Bool { storage.isEmpty }
    var keys: LazyMapSequence<Dictionary<ByteKey, Value>.Keys, String> { storage.keys.lazy.map(\.text) }
    var values: Dictionary<ByteKey, Value>.Values { storage.values }

    @discardableResult
    mutating func removeValue(forKey key: String) -> Value? { storage.removeValue(forKey: ByteKey(key)) }

    @discardableResult
    mutating func updateValue(_ value: Value, forKey key: String) -> Value? { storage.updateValue(value, forKey: ByteKey(key)) }

    mutating func removeAll() { storage.removeAll() }

    func filter(_ isIncluded: ((key: String, value: Value)) throws -> Bool) rethrows -> BytesDictionary {
        BytesDictionary(storage: try storage.filter { try isIncluded(($0.key.text, $0.value)) })
    }

    func mapValues<T>(_ transform: (Value) throws -> T) rethrows -> BytesDictionary<T> {
        BytesDictionary<T>(storage: try storage.mapValues(transform))
    }

    /// The entries ordered by the bytes of their keys (S3's order).
    func sortedByKey() -> [(key: String, value: Value)] {
        storage.sorted { $0.key < $1.key }.map { ($0.key.text, $0.value) }
    }

    func makeIterator() -> some IteratorProtocol<(key: String, value: Value)> {
        storage.lazy.map { (key: $0.key.text, value: $0.value) }.makeIterator()
    }
}

extension BytesDictionary: Sendable where Value: Sendable {}

/// A set of names or keys compared as bytes (`ByteKey`), with Set's API in Strings.
struct BytesSet: Sequence, ExpressibleByArrayLiteral, Sendable {
    private var storage: Set<ByteKey>

    init() { storage = [] }

    init(arrayLiteral elements: String...) { storage = Set(elements.map(ByteKey.init)) }

    init(_ elements: some Sequence<String>) { storage = Set(elements.map(ByteKey.init)) }

    func contains(_ key: String) -> Bool { storage.contains(ByteKey(key)) }

    @discardableResult
    mutating func insert(_ key: String) -> (inserted: Bool, memberAfterInsert: String) {
        let (inserted, member) = storage.insert(ByteKey(key))
        return (inserted, member.text)
    }

    @discardableResult
    mutating func remove(_ key: String) -> String? { storage.remove(ByteKey(key))?.text }

    var count: Int { storage.count }
    var isEmpty: Bool { storage.isEmpty }

    /// The keys ordered by their bytes (S3's order).
    func sortedByBytes() -> [String] { storage.sorted().map(\.text) }

    /// `keys` without repeats (the same bytes), in their order.
    static func distinct(_ keys: some Sequence<String>) -> [String] {
        var seen = BytesSet()
        return keys.filter { seen.insert($0).inserted }
    }

    func makeIterator() -> some IteratorProtocol<String> { storage.lazy.map(\.text).makeIterator() }
}
