package mariadbtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// template returns a data directory that mariadb-install-db made for this machine's
// MariaDB, shared by every test process: an install takes about 2 s and a copy of
// it a tenth of that, and a `make test` starts dozens of servers. It lives in the
// temporary directory under a name derived from what an install depends on (the
// tools' files and the arguments), so an upgraded MariaDB gets a new one; it
// appears whole (renamed into place once installed) or not at all.
func template(ctx context.Context) (string, error) {
	bin, err := lookTool("mariadb-install-db", "mysql_install_db")
	if err != nil {
		return "", err
	}
	server, err := lookTool("mariadbd", "mysqld")
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, p := range []string{bin, server} {
		st, err := os.Stat(p)
		if err != nil {
			return "", fmt.Errorf("mariadbtest: %w", err)
		}
		fmt.Fprintf(h, "%s %d %d\n", p, st.Size(), st.ModTime().UnixNano())
	}
	fmt.Fprintln(h, strings.Join(installArgs("DATA"), " "))
	// The user's own: another user's would not be readable, nor trustworthy.
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("flotilla-mariadb-template-%d-%x", os.Getuid(), h.Sum(nil)[:8]))
	data := filepath.Join(dir, "data")
	if ok, err := usableTemplate(dir); ok || err != nil {
		return data, err
	}
	tmp, err := os.MkdirTemp(os.TempDir(), "flotilla-mariadb-template-*.tmp")
	if err != nil {
		return "", fmt.Errorf("mariadbtest: %w", err)
	}
	defer os.RemoveAll(tmp) // gone once renamed; removed if another process won
	if err := install(ctx, bin, filepath.Join(tmp, "data"), filepath.Join(tmp, "install.log")); err != nil {
		return "", err
	}
	// Written last: a template without it (a cleaner of old files in the temporary
	// directory took part of it) is made again.
	if err := os.WriteFile(filepath.Join(tmp, templateDone), nil, 0o600); err != nil {
		return "", fmt.Errorf("mariadbtest: %w", err)
	}
	if _, err := os.Stat(dir); err == nil {
		// Incomplete (usableTemplate said so): replaced by this one.
		if err := os.RemoveAll(dir); err != nil {
			return "", fmt.Errorf("mariadbtest: remove the incomplete template %s: %w", dir, err)
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		if ok, _ := usableTemplate(dir); !ok {
			return "", fmt.Errorf("mariadbtest: put the installed template in place: %w", err)
		}
		// Another process installed it meanwhile: that one serves as well.
	}
	return data, nil
}

// templateDone marks a whole template.
const templateDone = "complete"

// usableTemplate reports whether dir holds a whole template of this user's; an
// error when it is someone else's.
func usableTemplate(dir string) (bool, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return false, nil
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Getuid() {
		return false, fmt.Errorf("mariadbtest: the template %s belongs to user %d, not to this one: remove it", dir, sys.Uid)
	}
	if _, err := os.Stat(filepath.Join(dir, templateDone)); err != nil {
		return false, nil
	}
	return true, nil
}

// copyTree copies the directory src to dst (which must not exist), keeping
// permissions; runs of zeros become holes, so a copy of the template's redo log
// (tens of MiB, nearly all zeros) writes almost nothing.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.Mkdir(target, info.Mode().Perm())
		case d.Type().IsRegular():
			return copySparse(path, target, info.Mode().Perm())
		default:
			return fmt.Errorf("%s: neither a file nor a directory (%v)", path, d.Type())
		}
	})
}

// copySparse copies the file src to a new file dst, leaving holes where src has
// blocks of zeros.
func copySparse(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, perm)
	if err != nil {
		return err
	}
	defer out.Close()
	const block = 64 << 10
	buf, zeros := make([]byte, block), make([]byte, block)
	var size int64
	for {
		n, err := io.ReadFull(in, buf)
		if n > 0 && !bytes.Equal(buf[:n], zeros[:n]) {
			if _, werr := out.WriteAt(buf[:n], size); werr != nil {
				return werr
			}
		}
		size += int64(n)
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return err
		}
	}
	if err := out.Truncate(size); err != nil {
		return err
	}
	return out.Close()
}
