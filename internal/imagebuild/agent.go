package imagebuild

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// IPTablesPackages are the Debian packages whose files give the agent image a working iptables and
// ip6tables (both the nf_tables and the legacy backend): the iptables package, the libraries its
// binaries and extensions link, the C library, and netbase for /etc/protocols.
var IPTablesPackages = []string{
	"iptables", "libip4tc2", "libip6tc2", "libxtables12", "libnftnl11", "libmnl0",
	"libnetfilter-conntrack3", "libnfnetlink0", "libc6", "netbase",
}

// NonRootUID is the agent's default user and group (the distroless "nonroot").
const NonRootUID = 65532

// AgentOptions are the inputs of the agent image.
type AgentOptions struct {
	// Binary is the agent, built static (CGO_ENABLED=0) for linux/Arch.
	Binary string
	// License is copied to /licenses/LICENSE when set.
	License string
	// DebCache is where the Debian packages are downloaded to (and reused from).
	DebCache string
	// Arch is the GOARCH; empty means this machine's. Another architecture's packages come from
	// this machine's apt sources too, which needs that architecture added to dpkg once
	// (`dpkg --add-architecture arm64 && apt-get update`).
	Arch string
	// Labels go into the image config (e.g. org.opencontainers.image.version).
	Labels map[string]string
}

// AgentSpec is the agent image: /usr/local/bin/agent as entrypoint, user 65532, and the iptables
// userspace that `agent node --setup-iptables` runs, taken from Debian packages (apt-get download,
// dpkg-deb -x; no maintainer scripts run, so the update-alternatives links are made here, pointing
// iptables and ip6tables at the nf_tables backend as Debian does by default).
func AgentSpec(o AgentOptions) (Spec, error) {
	arch := o.Arch
	if arch == "" {
		arch = runtime.GOARCH
	}
	debs, err := DownloadDebsArch(o.DebCache, arch, IPTablesPackages)
	if err != nil {
		return Spec{}, err
	}
	root, err := os.MkdirTemp("", "agent-image-root-")
	if err != nil {
		return Spec{}, err
	}
	defer os.RemoveAll(root)
	for _, deb := range debs {
		if out, err := exec.Command("dpkg-deb", "-x", deb, root).CombinedOutput(); err != nil {
			return Spec{}, fmt.Errorf("dpkg-deb -x %s: %v: %s", deb, err, out)
		}
	}
	files, err := debFiles(root)
	if err != nil {
		return Spec{}, err
	}
	// The files are read when the layer is built, after root is gone: keep them in memory.
	for i := range files {
		if files[i].Source != "" {
			data, err := os.ReadFile(files[i].Source)
			if err != nil {
				return Spec{}, err
			}
			files[i].Data, files[i].Source = data, ""
		}
	}

	// Debian's merged /usr: the binaries' interpreter is /lib64/ld-linux-x86-64.so.2 on amd64 and
	// /lib/ld-linux-aarch64.so.1 on arm64 (libc6:arm64 ships that link itself, under /usr/lib here).
	for _, d := range []string{"bin", "sbin", "lib", "lib64"} {
		files = append(files, File{Path: "/" + d, Link: "usr/" + d})
	}
	files = append(files, File{Path: "/usr/lib64", Dir: true})
	if arch == "amd64" {
		files = append(files, File{Path: "/usr/lib64/ld-linux-x86-64.so.2", Link: "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"})
	}
	// update-alternatives, as Debian's postinst would: the nf_tables backend.
	for _, fam := range []string{"iptables", "ip6tables"} {
		for _, suffix := range []string{"", "-save", "-restore"} {
			files = append(files, File{Path: "/usr/sbin/" + fam + suffix, Link: fam + "-nft" + suffix})
		}
	}
	files = append(files,
		File{Path: "/etc/passwd", Data: fmt.Appendf(nil, "root:x:0:0:root:/root:/usr/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/usr/sbin/nologin\n", NonRootUID, NonRootUID)},
		File{Path: "/etc/group", Data: fmt.Appendf(nil, "root:x:0:\nnonroot:x:%d:\n", NonRootUID)},
		File{Path: "/root", Dir: true, Mode: 0o700},
		File{Path: "/home/nonroot", Dir: true},
		File{Path: "/tmp", Dir: true, Mode: 0o1777},
		// iptables takes /run/xtables.lock; the node DaemonSet mounts the host's file there.
		File{Path: "/run", Dir: true},
		File{Path: "/usr/local/bin/agent", Source: o.Binary, Mode: 0o755},
	)
	if o.License != "" {
		files = append(files, File{Path: "/licenses/LICENSE", Source: o.License})
	}
	return Spec{
		Files:      files,
		Entrypoint: []string{"/usr/local/bin/agent"},
		Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		User:       fmt.Sprintf("%d:%d", NonRootUID, NonRootUID),
		Arch:       arch,
		Labels:     o.Labels,
	}, nil
}

// debFiles lists an extracted package tree as image files, leaving out documentation (except the
// copyright files), locales and the C library's charset converters; /bin, /sbin, /lib and /lib64
// entries move under /usr (merged /usr).
func debFiles(root string) ([]File, error) {
	var files []File
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel := filepath.ToSlash(strings.TrimPrefix(p, root))
		for _, skip := range []string{"/usr/share/man", "/usr/share/info", "/usr/share/lintian", "/usr/share/locale", "/usr/share/i18n", "/usr/share/bug"} {
			if rel == skip {
				return filepath.SkipDir
			}
		}
		if strings.HasPrefix(rel, "/usr/share/doc/") && !d.IsDir() && !strings.HasSuffix(rel, "/copyright") {
			return nil
		}
		if strings.Contains(rel, "/gconv") && strings.HasPrefix(rel, "/usr/lib/") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		for _, top := range []string{"/bin", "/sbin", "/lib", "/lib64"} {
			if rel == top || strings.HasPrefix(rel, top+"/") {
				rel = "/usr" + rel
			}
		}
		switch {
		case d.IsDir():
			files = append(files, File{Path: rel, Dir: true})
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			files = append(files, File{Path: rel, Link: target})
		case d.Type().IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			files = append(files, File{Path: rel, Source: p, Mode: info.Mode().Perm()})
		}
		return nil
	})
	return files, err
}

// DownloadDebs returns the .deb files of the packages for this machine's architecture; see
// DownloadDebsArch.
func DownloadDebs(dir string, pkgs []string) ([]string, error) {
	return DownloadDebsArch(dir, runtime.GOARCH, pkgs)
}

// debArch is Debian's name of a GOARCH.
func debArch(goarch string) string {
	switch goarch {
	case "arm":
		return "armhf"
	case "386":
		return "i386"
	case "ppc64le":
		return "ppc64el"
	}
	return goarch
}

// ForeignArchHint is the command that makes another architecture's packages available to
// apt-get download on this machine.
func ForeignArchHint(goarch string) string {
	return fmt.Sprintf("dpkg --add-architecture %s && apt-get update", debArch(goarch))
}

// debPackage is one package's apt candidate: the file `apt-get download` writes for it.
type debPackage struct{ name, version, arch string }

func (p debPackage) file() string {
	// apt-get download escapes an epoch's colon in the file name.
	return fmt.Sprintf("%s_%s_%s.deb", p.name, strings.ReplaceAll(p.version, ":", "%3a"), p.arch)
}

// DownloadDebsArch returns the .deb files of the packages built for goarch (or for all
// architectures), at the version apt would install now, downloading with `apt-get download` (this
// machine's apt sources, no root needed) the ones not yet in dir. Because the files are named by
// version, the image follows the mirror: a security update changes the image, an unchanged mirror
// gives the same files. Another architecture than this machine's must be known to dpkg; the error
// says how when it is not.
func DownloadDebsArch(dir, goarch string, pkgs []string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	arch := debArch(goarch)
	if err := archKnown(arch); err != nil {
		return nil, err
	}
	cands, err := candidates(arch, pkgs)
	if err != nil {
		return nil, err
	}
	var missing []string
	for _, c := range cands {
		if _, err := os.Stat(filepath.Join(dir, c.file())); err != nil {
			missing = append(missing, c.name+":"+c.arch)
		}
	}
	if len(missing) > 0 {
		// Download into a directory of our own and rename into the cache, so concurrent builds
		// (the tests, make release) sharing the cache never see a half-written package.
		tmp, err := os.MkdirTemp(dir, ".download-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmp)
		cmd := exec.Command("apt-get", append([]string{"download", "-q"}, missing...)...)
		cmd.Dir = tmp
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("apt-get download %s: %v: %s(run `apt-get update` first if the package lists are missing or stale)", strings.Join(missing, " "), err, out.String())
		}
		got, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
		for _, f := range got {
			if err := os.Rename(f, filepath.Join(dir, filepath.Base(f))); err != nil {
				return nil, err
			}
		}
	}
	debs := make([]string, 0, len(cands))
	for _, c := range cands {
		f := filepath.Join(dir, c.file())
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("apt-get download %s:%s left no %s in %s", c.name, c.arch, c.file(), dir)
		}
		debs = append(debs, f)
	}
	return debs, nil
}

// archKnown checks that dpkg knows the architecture, natively or as a foreign one.
func archKnown(arch string) error {
	native, err := exec.Command("dpkg", "--print-architecture").Output()
	if err != nil {
		return fmt.Errorf("dpkg --print-architecture: %v (the agent image takes its iptables from Debian packages: build it on Debian or Ubuntu)", err)
	}
	if strings.TrimSpace(string(native)) == arch {
		return nil
	}
	foreign, err := exec.Command("dpkg", "--print-foreign-architectures").Output()
	if err != nil {
		return fmt.Errorf("dpkg --print-foreign-architectures: %v", err)
	}
	for _, a := range strings.Fields(string(foreign)) {
		if a == arch {
			return nil
		}
	}
	return fmt.Errorf("the agent image for %s needs Debian's %s packages, and dpkg does not know that architecture: run `%s` (as root) once", arch, arch, ForeignArchHint(arch))
}

// candidates asks apt-cache for the version apt-get download would fetch of each package, as
// pkg:arch or, for architecture-independent packages (netbase), pkg:all.
func candidates(arch string, pkgs []string) ([]debPackage, error) {
	found := map[string]debPackage{}
	for _, qual := range []string{arch, "all"} {
		var ask []string
		for _, p := range pkgs {
			if _, ok := found[p]; !ok {
				ask = append(ask, p+":"+qual)
			}
		}
		if len(ask) == 0 {
			break
		}
		// apt-cache prints what it finds and fails for the rest; the rest is asked again as :all.
		out, _ := exec.Command("apt-cache", append([]string{"show", "--no-all-versions"}, ask...)...).Output()
		for _, stanza := range strings.Split(string(out), "\n\n") {
			var c debPackage
			for _, line := range strings.Split(stanza, "\n") {
				k, v, _ := strings.Cut(line, ": ")
				switch k {
				case "Package":
					c.name = v
				case "Version":
					c.version = v
				case "Architecture":
					c.arch = v
				}
			}
			if c.name != "" && c.version != "" && (c.arch == arch || c.arch == "all") {
				found[c.name] = c
			}
		}
	}
	cands := make([]debPackage, 0, len(pkgs))
	var missing []string
	for _, p := range pkgs {
		c, ok := found[p]
		if !ok {
			missing = append(missing, p+":"+arch)
			continue
		}
		cands = append(cands, c)
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("apt has no candidate for %s: run `%s` (as root) so apt knows %s packages", strings.Join(missing, ", "), ForeignArchHint(arch), arch)
	}
	return cands, nil
}

// AptReady says whether this machine can fetch the agent image's packages for goarch: dpkg knows
// the architecture and apt has a candidate for each package. The error carries the command that
// fixes it, so tests can fail (CI) or skip with it.
func AptReady(goarch string) error {
	if _, err := exec.LookPath("apt-get"); err != nil {
		return fmt.Errorf("the agent image takes its iptables from Debian packages and this machine has no apt-get: build it on Debian or Ubuntu")
	}
	arch := debArch(goarch)
	if err := archKnown(arch); err != nil {
		return err
	}
	_, err := candidates(arch, IPTablesPackages)
	return err
}
