package imagebuild_test

import (
	"archive/tar"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/apiproxy/apiproxy/internal/imagebuild"
)

// The archive is readable both ways the tools read it: as an OCI layout whose index names the
// image (ctr images import, kind load image-archive) and as a docker tarball (crane push, docker
// load), with the same config and files.
func TestWriteArchiveReadsAsOCILayoutAndDockerTarball(t *testing.T) {
	dir := t.TempDir()
	img, err := imagebuild.Build(imagebuild.Spec{
		Files: []imagebuild.File{
			{Path: "/bin/hello", Data: []byte("#!hello\n"), Mode: 0o755},
			{Path: "/etc/link", Link: "../bin/hello"},
		},
		Entrypoint: []string{"/bin/hello"},
		User:       "65532:65532",
	})
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(dir, "img.tar")
	const ref = "example.test/team/hello:v1"
	if err := imagebuild.WriteArchive(archive, ref, img); err != nil {
		t.Fatal(err)
	}

	// Docker tarball view (what crane push reads).
	dimg, err := tarball.ImageFromPath(archive, nil)
	if err != nil {
		t.Fatalf("reading as a docker tarball: %v", err)
	}
	cf, err := dimg.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.User != "65532:65532" || strings.Join(cf.Config.Entrypoint, " ") != "/bin/hello" || cf.OS != "linux" {
		t.Errorf("config: user %q entrypoint %v os %q", cf.Config.User, cf.Config.Entrypoint, cf.OS)
	}
	files := layerFiles(t, mutate.Extract(dimg))
	if files["bin/hello"] != "0755 #!hello\n" || files["etc/link"] != "link ../bin/hello" {
		t.Errorf("layer files: %v", files)
	}

	// OCI layout view: the index entry carries the name annotations ctr reads.
	x := filepath.Join(dir, "x")
	if out, err := exec.Command("tar", "-xf", archive, "-C", mkdir(t, x)).CombinedOutput(); err != nil {
		t.Fatalf("untar: %v %s", err, out)
	}
	idx, err := layout.ImageIndexFromPath(x)
	if err != nil {
		t.Fatalf("reading as an OCI layout: %v", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("%d manifests in index.json", len(im.Manifests))
	}
	a := im.Manifests[0].Annotations
	if a["io.containerd.image.name"] != ref || a["org.opencontainers.image.ref.name"] != "v1" {
		t.Errorf("annotations %v", a)
	}
	want, _ := img.Digest()
	if im.Manifests[0].Digest != want {
		t.Errorf("index points at %s, image is %s", im.Manifests[0].Digest, want)
	}
}

// Bad input is refused with the name in the message, and nothing is left at the destination.
func TestWriteArchiveRejectsBadName(t *testing.T) {
	img, err := imagebuild.Build(imagebuild.Spec{Files: []imagebuild.File{{Path: "/a", Data: []byte("a")}}})
	if err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(t.TempDir(), "img.tar")
	err = imagebuild.WriteArchive(dest, "Not A Name", img)
	if err == nil || !strings.Contains(err.Error(), `"Not A Name"`) {
		t.Fatalf("err = %v, want one naming the bad image name", err)
	}
	if _, serr := os.Stat(dest); !os.IsNotExist(serr) {
		t.Errorf("%s exists after a failed write", dest)
	}
}

// The iptables userspace in the agent image works: the image's own iptables and ip6tables (run
// chrooted into the image's files, in a fresh network namespace) add the NOTRACK and ACCEPT rules
// the node role keeps. Needs root (chroot, unshare) and apt (the Debian packages).
func TestAgentImageIPTablesRuns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (chroot and a network namespace)")
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		t.Skip("needs apt-get and dpkg-deb (Debian) for the iptables packages")
	}
	dir := t.TempDir()
	agent := filepath.Join(dir, "agent")
	if err := os.WriteFile(agent, []byte("not really the agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	cache, _ := os.UserCacheDir()
	spec, err := imagebuild.AgentSpec(imagebuild.AgentOptions{Binary: agent, DebCache: filepath.Join(cache, "apiproxy", "debs")})
	if err != nil {
		t.Fatal(err)
	}
	img, err := imagebuild.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	if cf.Config.User != "65532:65532" {
		t.Errorf("user %q, want non-root 65532:65532", cf.Config.User)
	}
	root := mkdir(t, filepath.Join(dir, "root"))
	cmd := exec.Command("tar", "-x", "-C", root)
	cmd.Stdin = mutate.Extract(img)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("extracting the image: %v %s", err, out)
	}
	script := [][]string{
		{"iptables", "--version"},
		{"iptables", "-t", "raw", "-A", "PREROUTING", "-d", "10.97.0.2/32", "-p", "tcp", "--dport", "443", "-j", "NOTRACK"},
		{"iptables", "-t", "raw", "-A", "OUTPUT", "-s", "10.97.0.2/32", "-p", "tcp", "--sport", "443", "-j", "NOTRACK"},
		{"iptables", "-A", "INPUT", "-d", "10.97.0.2/32", "-p", "tcp", "--dport", "443", "-j", "ACCEPT"},
		{"ip6tables", "-t", "raw", "-A", "PREROUTING", "-d", "fd00:97::2/128", "-p", "tcp", "--dport", "443", "-j", "NOTRACK"},
		{"iptables-save"},
	}
	for _, args := range script {
		out, err := exec.Command("unshare", append([]string{"--net", "chroot", root, "/usr/sbin/" + args[0]}, args[1:]...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s in the image: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	// The same backend as this machine's iptables, so the node role's rules sit next to kube-proxy's.
	out, err := exec.Command("unshare", "--net", "chroot", root, "/usr/sbin/iptables", "--version").Output()
	if err != nil || !strings.Contains(string(out), "nf_tables") {
		t.Errorf("image iptables --version = %q (%v), want the nf_tables backend", out, err)
	}
	for _, f := range []string{"etc/passwd", "etc/group", "usr/share/doc/iptables/copyright"} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("image lacks /%s", f)
		}
	}
}

func mkdir(t *testing.T, d string) string {
	t.Helper()
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// layerFiles reads a flattened filesystem tar into "mode contents" / "link target" per path.
func layerFiles(t *testing.T, r io.ReadCloser) map[string]string {
	t.Helper()
	defer r.Close()
	out := map[string]string{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		switch h.Typeflag {
		case tar.TypeSymlink:
			out[h.Name] = "link " + h.Linkname
		case tar.TypeReg:
			b, _ := io.ReadAll(tr)
			out[h.Name] = fmt.Sprintf("%04o %s", h.Mode&0o777, b)
		}
	}
}
