import Linux
import Testing

@Suite("path helpers below the typed-path boundary")
struct PathHelperTests {
    @Test("parentFolder: the folder an entry is in, / for a top-level entry, . for a bare name")
    func parentFolders() {
        #expect(parentFolder(of: "/var/lib/machines/a") == "/var/lib/machines")
        #expect(parentFolder(of: "/a") == "/")
        #expect(parentFolder(of: "a") == ".")
        #expect(parentFolder(of: "a/b") == "a")
    }

    @Test("pathComponents leaves out empty components; pathClimbs finds a .. anywhere")
    func componentsAndClimbing() {
        #expect(pathComponents("//a///b/") == ["a", "b"])
        #expect(pathComponents("/") == [])
        #expect(pathClimbs("/a/../b"))
        #expect(pathClimbs(".."))
        #expect(!pathClimbs("/a/..b/c.."))
    }
}
