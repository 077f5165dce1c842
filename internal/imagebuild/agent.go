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
	// Arch is the GOARCH; empty means this machine's. The packages come from this machine's apt
	// sources, so it must be this machine's architecture.
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
	if arch != runtime.GOARCH {
		return Spec{}, fmt.Errorf("agent image for %s: the iptables packages come from this machine's apt sources (%s); build on a %s machine", arch, runtime.GOARCH, arch)
	}
	debs, err := DownloadDebs(o.DebCache, IPTablesPackages)
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

	// Debian's merged /usr: the binaries' interpreter is /lib64/ld-linux-*.so.
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

// DownloadDebs returns the .deb files of the packages, downloading with `apt-get download` (this
// machine's apt sources, no root needed) the ones not yet in dir.
func DownloadDebs(dir string, pkgs []string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	find := func(pkg string) string {
		m, _ := filepath.Glob(filepath.Join(dir, pkg+"_*.deb"))
		if len(m) == 0 {
			return ""
		}
		return m[len(m)-1]
	}
	var missing []string
	for _, p := range pkgs {
		if find(p) == "" {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		cmd := exec.Command("apt-get", append([]string{"download", "-q"}, missing...)...)
		cmd.Dir = dir
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("apt-get download %s: %v: %s(run `apt-get update` first if the package lists are missing)", strings.Join(missing, " "), err, out.String())
		}
	}
	debs := make([]string, 0, len(pkgs))
	for _, p := range pkgs {
		f := find(p)
		if f == "" {
			return nil, fmt.Errorf("apt-get download %s left no %s_*.deb in %s", p, p, dir)
		}
		debs = append(debs, f)
	}
	return debs, nil
}
