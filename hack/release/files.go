package main

import (
	"archive/tar"
	"archive/zip"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// ownNames are what a release, `make dist` or `make image` write into the dist directory (and the
// temporary names they write through); only these are removed when the directory is reused.
var ownNames = []string{
	"kubectl-apiproxy_*", checksumsFile, krewManifest, "*.cdx.json", layoutDir, layoutArchive,
	"agent-image.tar", "sha256sums.txt", ".layout-*", ".image-*", "*.tmp",
}

// prepareDist makes dist an empty directory for the release, removing what an earlier release wrote
// and refusing to touch anything else (DIST could name a directory with other files in it).
func prepareDist(dist string) error {
	if err := os.MkdirAll(dist, 0o755); err != nil {
		return err
	}
	entries, err := os.ReadDir(dist)
	if err != nil {
		return err
	}
	var own, foreign []string
	for _, e := range entries {
		matched := false
		for _, pat := range ownNames {
			if ok, _ := filepath.Match(pat, e.Name()); ok {
				matched = true
				break
			}
		}
		if matched {
			own = append(own, e.Name())
		} else {
			foreign = append(foreign, e.Name())
		}
	}
	if len(foreign) > 0 {
		return fmt.Errorf("%s holds files a release does not write (%s): move them away or choose another directory (DIST=...)", dist, strings.Join(foreign, ", "))
	}
	for _, n := range own {
		if err := os.RemoveAll(filepath.Join(dist, n)); err != nil {
			return err
		}
	}
	return nil
}

type archiveFile struct {
	name string // in the archive, at the top level
	path string // on this machine
	mode int64
}

// writeArchive writes a .tar.gz or, for a .zip name, a zip archive of the files, in the given order,
// each with the release's time, root as owner and the given mode, so one commit gives one archive.
func writeArchive(dest string, files []archiveFile, mtime time.Time) error {
	tmp := dest + ".tmp"
	out, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if strings.HasSuffix(dest, ".zip") {
		err = writeZip(out, files, mtime)
	} else {
		err = writeTarGz(out, files, mtime)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", dest, err)
	}
	return os.Rename(tmp, dest)
}

func writeTarGz(w io.Writer, files []archiveFile, mtime time.Time) error {
	// gzip's header keeps no name and no time (Go writes neither unless asked).
	zw, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(zw)
	for _, f := range files {
		data, err := os.ReadFile(f.path)
		if err != nil {
			return err
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: f.mode, Size: int64(len(data)),
			ModTime: mtime, Uname: "root", Gname: "root", Format: tar.FormatUSTAR}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := tw.Write(data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return zw.Close()
}

func writeZip(w io.Writer, files []archiveFile, mtime time.Time) error {
	zw := zip.NewWriter(w)
	for _, f := range files {
		data, err := os.ReadFile(f.path)
		if err != nil {
			return err
		}
		hdr := &zip.FileHeader{Name: f.name, Method: zip.Deflate, Modified: mtime.UTC()}
		hdr.SetMode(fs.FileMode(f.mode))
		fw, err := zw.CreateHeader(hdr)
		if err != nil {
			return err
		}
		if _, err := fw.Write(data); err != nil {
			return err
		}
	}
	return zw.Close()
}

type fileSum struct{ name, sum string }

// writeChecksums writes checksums.txt in sha256sum's format (`sha256sum -c checksums.txt` checks a
// download; add --ignore-missing for a subset) for every regular file directly in dist, by name. The
// layout directory is covered by agent-image.oci.tar, which holds the same files, and by its own
// content addressing.
func writeChecksums(dist string) ([]fileSum, error) {
	entries, err := os.ReadDir(dist)
	if err != nil {
		return nil, err
	}
	var sums []fileSum
	for _, e := range entries {
		if !e.Type().IsRegular() || e.Name() == checksumsFile {
			continue
		}
		sum, err := sha256File(filepath.Join(dist, e.Name()))
		if err != nil {
			return nil, err
		}
		sums = append(sums, fileSum{e.Name(), sum})
	}
	sort.Slice(sums, func(i, j int) bool { return sums[i].name < sums[j].name })
	var b strings.Builder
	for _, s := range sums {
		fmt.Fprintf(&b, "%s  %s\n", s.sum, s.name)
	}
	return sums, os.WriteFile(filepath.Join(dist, checksumsFile), []byte(b.String()), 0o644)
}

// sha256File is the hex sha256 of a file.
func sha256File(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
