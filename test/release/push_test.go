package release_test

// The release workflow's push step (.github/workflows/release.yml) and the README's skopeo
// commands, run against a real CNCF distribution registry on loopback: the step as written (crane
// at the version the workflow installs, which is go.mod's, built from the Go module proxy), skopeo
// from Debian on the layout and on the .oci.tar, and a push that rewraps the layout, which the
// step's digest check must refuse. Each test checks the pushed index as a cluster reads it: the
// digest the plugin pins, both platforms, each platform's image pulled by digest.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/yaml"

	"github.com/apiproxy/apiproxy/pkg/version"
)

// The module crane comes from; the workflow installs its cmd/crane at go.mod's version of it.
const craneModule = "github.com/google/go-containerregistry"

// How GitHub's runner runs a step that names no shell: (`bash -e {0}` on Linux).
var stepShell = []string{"bash", "-e"}

// The release workflow pushes the layout as written: the step, run as the workflow has it (crane
// push, crane digest against index.json, DIGEST into $GITHUB_ENV), succeeds against a real
// registry, and what the registry then serves under the tag is the index the plugin pins, with
// both platforms, each pullable by digest.
func TestPushWorkflowStepPushesThePinnedIndex(t *testing.T) {
	needJQ(t)
	registryBinary(t)
	dist := releaseDir(t)
	pinned := layoutIndexDigest(t, filepath.Join(dist, "agent-image"))
	if got, want := releasedAgentImage(t, dist), testImageRepo+":"+releaseVersion+"@"+pinned.String(); got != want {
		t.Fatalf("the release's plugin pins %q, want %q (index.json's entry)", got, want)
	}
	repo := startRegistry(t) + "/apiproxy/agent"

	res := runPushStep(t, dist, repo, nil)
	if res.err != nil {
		t.Fatalf("the workflow's push step failed: %v\n%s", res.err, res.output)
	}
	if want := "DIGEST=" + pinned.String() + "\n"; res.githubEnv != want {
		t.Errorf("the step wrote %q to $GITHUB_ENV, want %q (the signing step signs that digest)", res.githubEnv, want)
	}
	// The step's own check passed; this is the same question asked by the test, not by the step.
	if got := strings.TrimSpace(runCrane(t, "digest", repo+":"+releaseVersion)); got != pinned.String() {
		t.Errorf("crane digest %s:%s = %s, the release pins %s", repo, releaseVersion, got, pinned)
	}
	checkPushedIndex(t, repo+":"+releaseVersion, dist)
}

// skopeo (Debian's) pushes the layout directory and the layout archive, as the README tells
// maintainers and mirror operators, under the digest the plugin pins. --preserve-digests makes a
// skopeo that would rewrite the index fail instead of pushing a digest nothing pins.
func TestPushWithSkopeoKeepsThePinnedDigest(t *testing.T) {
	skopeo := skopeoBinary(t)
	registryBinary(t)
	dist := releaseDir(t)
	registry := startRegistry(t)
	for _, src := range []struct{ name, ref string }{
		{"layout", "oci:" + filepath.Join(dist, "agent-image")},
		{"archive", "oci-archive:" + filepath.Join(dist, "agent-image.oci.tar")},
	} {
		t.Run(src.name, func(t *testing.T) {
			ref := registry + "/apiproxy/agent-skopeo-" + src.name + ":" + releaseVersion
			out, err := runSkopeo(t, skopeo, "copy", "--all", "--preserve-digests", "--dest-tls-verify=false", src.ref, "docker://"+ref)
			if err != nil {
				t.Fatalf("skopeo copy --all --preserve-digests %s docker://%s: %v\n%s%s", src.ref, ref, err, out, skopeoHint(out))
			}
			checkPushedIndex(t, ref, dist)
		})
	}
}

// The step's digest check is what stands between a push that rewraps the layout and a release
// whose plugins pin a digest the registry does not have: with `crane push --index` (which pushes
// index.json itself, an index of the index) the step fails, names both digests, and hands no
// DIGEST to the signing step.
func TestPushRewrappedLayoutFailsTheDigestCheck(t *testing.T) {
	needJQ(t)
	registryBinary(t)
	dist := releaseDir(t)
	pinned := layoutIndexDigest(t, filepath.Join(dist, "agent-image"))
	repo := startRegistry(t) + "/apiproxy/agent"

	res := runPushStep(t, dist, repo, func(script string) string {
		const push = "crane push dist/agent-image "
		if strings.Count(script, push) != 1 {
			t.Fatalf("the push step does not run %q once; update this test with the step:\n%s", push, script)
		}
		return strings.Replace(script, push, "crane push --index dist/agent-image ", 1)
	})
	if res.err == nil {
		t.Fatalf("the push step accepted a rewrapped index:\n%s", res.output)
	}
	rewrapped := strings.TrimSpace(runCrane(t, "digest", repo+":"+releaseVersion))
	if rewrapped == pinned.String() {
		t.Fatalf("crane push --index kept the digest %s: the negative control controls nothing", pinned)
	}
	if want := "pushed " + rewrapped + ", the release pins " + pinned.String(); !strings.Contains(res.output, want) {
		t.Errorf("the step's error does not say %q:\n%s", want, res.output)
	}
	if res.githubEnv != "" {
		t.Errorf("the failed step still wrote %q to $GITHUB_ENV", res.githubEnv)
	}
}

// checkPushedIndex reads ref from the registry as a node does: the index is the layout's index byte
// for byte (so its digest is the pinned one), holds exactly linux/amd64 and linux/arm64, and each
// platform's image pulls by digest with every blob matching its digest and its config naming the
// platform.
func checkPushedIndex(t *testing.T, ref, dist string) {
	t.Helper()
	lp, err := layout.ImageIndexFromPath(filepath.Join(dist, "agent-image"))
	if err != nil {
		t.Fatal(err)
	}
	pinned := layoutIndexDigest(t, filepath.Join(dist, "agent-image"))
	want, err := lp.ImageIndex(pinned)
	if err != nil {
		t.Fatal(err)
	}
	wantRaw, err := want.RawManifest()
	if err != nil {
		t.Fatal(err)
	}

	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	opts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(loopbackTransport())}
	idx, err := remote.Index(tag, opts...)
	if err != nil {
		t.Fatalf("reading the index %s: %v", ref, err)
	}
	raw, err := idx.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := idx.Digest(); got != pinned || !bytes.Equal(raw, wantRaw) {
		t.Fatalf("%s is %s, the release pins %s:\n pushed %s\nwritten %s", ref, got, pinned, raw, wantRaw)
	}

	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var platforms []string
	for _, d := range m.Manifests {
		if d.Platform == nil {
			t.Errorf("%s: manifest %s has no platform", ref, d.Digest)
			continue
		}
		p := d.Platform.OS + "/" + d.Platform.Architecture
		platforms = append(platforms, p)
		byDigest := tag.Context().Digest(d.Digest.String())
		img, err := remote.Image(byDigest, opts...)
		if err != nil {
			t.Errorf("pulling %s (%s): %v", byDigest, p, err)
			continue
		}
		if err := pullWhole(img); err != nil {
			t.Errorf("%s (%s) does not pull whole: %v", byDigest, p, err)
			continue
		}
		cfg, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if got := cfg.OS + "/" + cfg.Architecture; got != p {
			t.Errorf("%s: the index lists it as %s, its config says %s", byDigest, p, got)
		}
	}
	sort.Strings(platforms)
	if strings.Join(platforms, " ") != "linux/amd64 linux/arm64" {
		t.Errorf("%s holds %v, want linux/amd64 and linux/arm64", ref, platforms)
	}
}

// pullWhole downloads img's config and every layer, as a node pulling it does, and checks each
// against the digest and size its manifest gives.
func pullWhole(img v1.Image) error {
	m, err := img.Manifest()
	if err != nil {
		return err
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if got := sha256Digest(cfg); got != m.Config.Digest.String() || int64(len(cfg)) != m.Config.Size {
		return fmt.Errorf("config is %s (%d bytes), the manifest says %s (%d bytes)", got, len(cfg), m.Config.Digest, m.Config.Size)
	}
	if len(m.Layers) == 0 {
		return errors.New("the manifest lists no layers")
	}
	for _, d := range m.Layers {
		l, err := img.LayerByDigest(d.Digest)
		if err != nil {
			return fmt.Errorf("layer %s: %w", d.Digest, err)
		}
		rc, err := l.Compressed()
		if err != nil {
			return fmt.Errorf("layer %s: %w", d.Digest, err)
		}
		h := sha256.New()
		n, err := io.Copy(h, rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("layer %s: %w", d.Digest, err)
		}
		if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != d.Digest.String() || n != d.Size {
			return fmt.Errorf("layer %s (%d bytes) downloads as %s (%d bytes)", d.Digest, d.Size, got, n)
		}
	}
	return nil
}

func sha256Digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// releasedAgentImage is the agent image the release's plugin for this machine pins, as
// `kubectl-apiproxy version -o json` prints it.
func releasedAgentImage(t *testing.T, dist string) string {
	t.Helper()
	files := readArchive(t, filepath.Join(dist, hostArchive()))
	bin := filepath.Join(t.TempDir(), "kubectl-apiproxy")
	if runtime.GOOS == "windows" {
		bin += ".exe"
	}
	if err := os.WriteFile(bin, files[filepath.Base(bin)], 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "version", "-o", "json")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+filepath.Join(t.TempDir(), "no-kubeconfig"))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s version -o json: %v", hostArchive(), err)
	}
	var v version.Info
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("version -o json printed %q: %v", out, err)
	}
	return v.AgentImage
}

// --- the workflow's step ---

type stepResult struct {
	output    string // stdout and stderr
	githubEnv string // what the step appended to $GITHUB_ENV
	err       error
}

// runPushStep runs the workflow's push step (its run: script, edited by edit when not nil) in a
// workspace whose dist/ is the release, with IMAGE_REPO=repo and the tag's GITHUB_REF_NAME, the
// crane the workflow installs first on PATH and a Docker config of its own (the step's `crane auth
// login` writes there; the registry on loopback needs no login).
func runPushStep(t *testing.T, dist, repo string, edit func(string) string) stepResult {
	t.Helper()
	needJQ(t)
	script := expandExpressions(t, workflowStep(t, "crane push").Run)
	if edit != nil {
		script = edit(script)
	}
	work := t.TempDir()
	if err := os.Symlink(dist, filepath.Join(work, "dist")); err != nil {
		t.Fatal(err)
	}
	scriptFile := filepath.Join(work, "push-step.sh")
	githubEnv := filepath.Join(work, "github-env")
	for path, content := range map[string]string{scriptFile: script, githubEnv: ""} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, stepShell[0], append(stepShell[1:], scriptFile)...)
	cmd.Dir = work
	cmd.Env = []string{
		"PATH=" + filepath.Dir(craneBinary(t)) + ":/usr/bin:/bin",
		"HOME=" + filepath.Join(work, "home"),
		"DOCKER_CONFIG=" + filepath.Join(work, "docker"),
		"IMAGE_REPO=" + repo,
		"GITHUB_REF_NAME=" + releaseVersion,
		"GITHUB_ENV=" + githubEnv,
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	res := stepResult{err: cmd.Run()}
	res.output = out.String()
	env, err := os.ReadFile(githubEnv)
	if err != nil {
		t.Fatal(err)
	}
	res.githubEnv = string(env)
	return res
}

type workflowStepDef struct {
	Name string `json:"name"`
	Uses string `json:"uses"`
	Run  string `json:"run"`
}

// workflowStep is the one step of the release workflow (as the release snapshot has it) whose run:
// script contains marker.
func workflowStep(t *testing.T, marker string) workflowStepDef {
	t.Helper()
	path := filepath.Join(shared.snap, ".github", "workflows", "release.yml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var wf struct {
		Jobs map[string]struct {
			Steps []workflowStepDef `json:"steps"`
		} `json:"jobs"`
	}
	if err := yaml.Unmarshal(data, &wf); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var found []workflowStepDef
	for _, job := range wf.Jobs {
		for _, s := range job.Steps {
			if strings.Contains(s.Run, marker) {
				found = append(found, s)
			}
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s has %d steps that run %q, want one", path, len(found), marker)
	}
	return found[0]
}

var expression = regexp.MustCompile(`\$\{\{\s*(.*?)\s*\}\}`)

// expandExpressions replaces the GitHub expressions the push step uses with what the runner would
// put there; an expression the test does not know fails the test, so a changed step is looked at.
func expandExpressions(t *testing.T, script string) string {
	t.Helper()
	values := map[string]string{
		"secrets.GITHUB_TOKEN": "token-of-the-test",
		"github.actor":         "release-test",
	}
	return expression.ReplaceAllStringFunc(script, func(m string) string {
		key := expression.FindStringSubmatch(m)[1]
		v, ok := values[key]
		if !ok {
			t.Fatalf("the push step uses ${{ %s }}, which this test has no value for: add one to expandExpressions", key)
		}
		return v
	})
}

// needJQ: the push step reads index.json with jq.
func needJQ(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("jq"); err != nil {
		prerequisiteMissing(t, "jq is not installed (the workflow's push step reads index.json with it): apt-get install jq (.ci/run installs it)")
	}
}

// --- crane ---

var craneBuild struct {
	once sync.Once
	path string
	err  error
}

// craneBinary is crane built from the Go module proxy at the version the release workflow installs
// (`go install .../cmd/crane@VERSION`), which must be go.mod's go-containerregistry: so the crane
// tested here, the crane that pushes a release and the library that wrote the layout are one.
func craneBinary(t *testing.T) string {
	t.Helper()
	releaseDir(t) // the snapshot, whose go.mod and workflow the release was made from
	install := regexp.MustCompile(`go install ` + regexp.QuoteMeta(craneModule) + `/cmd/crane@(\S+)`).FindStringSubmatch(workflowStep(t, "/cmd/crane@").Run)
	if install == nil {
		t.Fatalf("the release workflow does not `go install %s/cmd/crane@VERSION`", craneModule)
	}
	out, err := exec.Command("go", "-C", shared.snap, "list", "-m", "-f", "{{.Version}}", craneModule).Output()
	if err != nil {
		t.Fatalf("go list -m %s: %v", craneModule, err)
	}
	if goMod := strings.TrimSpace(string(out)); install[1] != goMod {
		t.Fatalf("the release workflow installs crane %s, go.mod has %s %s: keep them the same (the layout is written with go.mod's)", install[1], craneModule, goMod)
	}
	craneBuild.once.Do(func() {
		craneBuild.path = filepath.Join(shared.dir, "crane", "crane")
		cmd := exec.Command("go", "build", "-trimpath", "-o", craneBuild.path, craneModule+"/cmd/crane")
		cmd.Dir = shared.snap
		cmd.Env = append(withoutEnv(os.Environ(), "GOOS", "GOARCH", "GOFLAGS"), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			craneBuild.err = fmt.Errorf("go build %s/cmd/crane: %v\n%s", craneModule, err, out)
			return
		}
		out, err := exec.Command(craneBuild.path, "version").Output()
		if err != nil {
			craneBuild.err = fmt.Errorf("crane version: %v", err)
		} else if v := strings.TrimSpace(string(out)); v != install[1] {
			craneBuild.err = fmt.Errorf("the crane built from go.mod says version %q, want %s", v, install[1])
		}
	})
	if craneBuild.err != nil {
		t.Fatal(craneBuild.err)
	}
	return craneBuild.path
}

// runCrane runs crane with a Docker config of its own (no credentials of this machine).
func runCrane(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(craneBinary(t), args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + t.TempDir(), "DOCKER_CONFIG=" + t.TempDir()}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("crane %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// --- skopeo ---

func skopeoBinary(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("skopeo")
	if err != nil {
		prerequisiteMissing(t, "skopeo is not installed: apt-get install --no-install-recommends skopeo (.ci/run installs it)")
	}
	return p
}

// runSkopeo runs skopeo with nothing of this machine's container configuration: a policy that
// accepts any image (the default Debian installs, written here so /etc cannot change it), no
// registries.conf, no registries.d, credentials and caches under a temporary HOME.
// _CONTAINERS_ROOTLESS_UID keeps containers/image's blob-info cache in that HOME: as root it
// would create /var/lib/containers/cache and leave it behind.
func runSkopeo(t *testing.T, skopeo string, args ...string) (string, error) {
	t.Helper()
	dir := t.TempDir()
	policy := filepath.Join(dir, "policy.json")
	registriesConf := filepath.Join(dir, "registries.conf")
	registriesD := filepath.Join(dir, "registries.d")
	if err := os.WriteFile(policy, []byte(`{"default":[{"type":"insecureAcceptAnything"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(registriesConf, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(registriesD, 0o700); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, skopeo, append([]string{"--policy", policy, "--registries.d", registriesD}, args...)...)
	cmd.Env = []string{
		"PATH=/usr/bin:/bin",
		"HOME=" + filepath.Join(dir, "home"),
		"TMPDIR=" + dir, // oci-archive: unpacks the archive there
		"CONTAINERS_REGISTRIES_CONF=" + registriesConf,
		"REGISTRY_AUTH_FILE=" + filepath.Join(dir, "auth.json"),
		"_CONTAINERS_ROOTLESS_UID=65534",
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// skopeoHint explains the failure skopeo before 1.16 (containers/image before 5.32, Debian 12 has
// 1.9.3) gives for an index whose entries carry artifactType: it drops that field, so the index
// would change, and --preserve-digests refuses.
func skopeoHint(out string) string {
	if !strings.Contains(out, "Instructed to preserve digests") {
		return ""
	}
	return "\nskopeo would rewrite the index: containers/image before v5.32 (skopeo 1.16) drops fields it does not know, such as artifactType in the index's entries. Write the index without them, or require a newer skopeo."
}

// --- the registry ---

// startRegistry runs the CNCF distribution registry (hack/test-assets.sh builds it into the node
// assets directory) on a free loopback port, plain HTTP, with its blobs in a temporary directory,
// until the test ends; it returns HOST:PORT. The process is stopped by its PID, and dies with the
// test process if that is killed.
func startRegistry(t *testing.T) string {
	t.Helper()
	bin := registryBinary(t)
	dir := t.TempDir()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		addr, err := freeLoopbackAddr()
		if err != nil {
			t.Fatal(err)
		}
		if lastErr = runRegistry(t, bin, dir, addr); lastErr == nil {
			return addr
		}
	}
	t.Fatalf("the registry did not start: %v", lastErr)
	return ""
}

func runRegistry(t *testing.T, bin, dir, addr string) error {
	secret := make([]byte, 16)
	if _, err := rand.Read(secret); err != nil {
		return err
	}
	config := filepath.Join(dir, "config.yml")
	content := fmt.Sprintf(registryConfig, filepath.Join(dir, "data"), addr, hex.EncodeToString(secret))
	if err := os.WriteFile(config, []byte(content), 0o600); err != nil {
		return err
	}
	logFile, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(bin, "serve", config)
	// No REGISTRY_* variable of this machine can override the file; OTEL_TRACES_EXPORTER=none stops
	// the trace exporter, which would send to an OTLP collector on localhost:4318.
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + dir, "OTEL_TRACES_EXPORTER=none"}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stop := func() {
		_ = syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	}

	client := &http.Client{Transport: loopbackTransport(), Timeout: 2 * time.Second}
	err = wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		select {
		case <-exited:
			return false, errors.New("the registry exited")
		default:
		}
		resp, err := client.Get("http://" + addr + "/v2/")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		stop()
		log, _ := os.ReadFile(logFile.Name())
		return fmt.Errorf("registry on %s: %v\n%s", addr, err, log)
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			if log, err := os.ReadFile(logFile.Name()); err == nil {
				t.Logf("registry log:\n%s", lastLines(string(log), 40))
			}
		}
	})
	return nil
}

// registryBinary is the registry hack/test-assets.sh builds into the node assets directory
// (APIPROXY_NODE_ASSETS, or the script's --node-dir).
func registryBinary(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("APIPROXY_NODE_ASSETS")
	if dir == "" {
		out, err := exec.Command("bash", filepath.Join(repoRoot(t), "hack", "test-assets.sh"), "--node-dir").Output()
		if err != nil {
			t.Fatalf("hack/test-assets.sh --node-dir: %v", err)
		}
		dir = strings.TrimSpace(string(out))
	}
	bin := filepath.Join(dir, "registry")
	if _, err := os.Stat(bin); err != nil {
		prerequisiteMissing(t, fmt.Sprintf("the distribution registry is not built (%s): run hack/test-assets.sh, which builds it from the Go module proxy", bin))
	}
	return bin
}

// Blobs under a temporary directory, plain HTTP on one loopback port, no upload purging, and no
// notifications, proxy (pull-through), redis, debug server or auth: nothing that reaches out.
const registryConfig = `version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: %s
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: %s
`

func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// loopbackTransport never goes through a proxy of the environment.
func loopbackTransport() http.RoundTripper {
	return &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		TLSHandshakeTimeout: 5 * time.Second,
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// prerequisiteMissing skips the test with msg, or fails it under CI=true.
func prerequisiteMissing(t *testing.T, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}
