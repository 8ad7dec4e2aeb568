//go:build !linux

package hugepage

// Advise does nothing where madvise(MADV_HUGEPAGE) does not exist.
func (a Advisor) Advise(...[]byte) error { return nil }

// Advised is false where huge-page advice does not exist.
func Advised([]byte) (bool, error) { return false, nil }
