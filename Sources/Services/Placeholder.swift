import CArchive
import CCurl
import CGpgme
import CSystemd
import CLinux
