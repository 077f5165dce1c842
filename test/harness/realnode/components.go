package realnode

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

var (
	containerdState  = filepath.Join(RunDir, "containerd")
	containerdSocket = filepath.Join(containerdState, "containerd.sock")
	runcRoot         = filepath.Join(RunDir, "runc")
	cniIPAMDir       = filepath.Join(RunDir, "cni")
	kubeletRoot      = filepath.Join(StateDir, "kubelet")
)

func statePath(parts ...string) string { return filepath.Join(append([]string{StateDir}, parts...)...) }

// writeConfigs writes containerd's, the CNI network's, the kubelet's and kube-proxy's configuration.
func writeConfigs(c *Cluster, nw *network) error {
	files := map[string]string{
		statePath("containerd", "config.toml"): fmt.Sprintf(containerdConfig, statePath("containerd", "root"), containerdState,
			containerdSocket, statePath("containerd", "opt"), c.PauseImage, certsDir(), runcRoot, statePath("cni", "net.d")),
		statePath("cni", "net.d", "10-"+CNINetwork+".conflist"): fmt.Sprintf(cniConfig, CNINetwork, Bridge, nw.pod, c.NodeIP, cniIPAMDir),
		statePath("kubelet.yaml"): fmt.Sprintf(kubeletConfig, containerdSocket, c.NodeIP, statePath("pki", "ca.crt"),
			statePath("pki", "kubelet-serving.crt"), statePath("pki", "kubelet-serving.key"), statePath("podlogs"), statePath("volume-plugins")),
		statePath("kube-proxy.yaml"): fmt.Sprintf(kubeProxyConfig, statePath("pki", "kube-proxy.kubeconfig"), c.NodeName, nw.pod, c.NodeIP, c.NodeIP),
	}
	for path, content := range files {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// pathEnv puts the node binaries (containerd finds its shim on PATH) before Debian's runc, CNI,
// iptables and conntrack.
func (c *Cluster) pathEnv() []string {
	return append(os.Environ(), "PATH="+c.nodeAssets+":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
}

func (c *Cluster) containerdCmd() *exec.Cmd {
	cmd := exec.Command(filepath.Join(c.nodeAssets, "containerd"), "--config", statePath("containerd", "config.toml"))
	// Pulls from the node's registry go straight to the node IP, whatever proxy this machine names.
	cmd.Env = append(c.pathEnv(), "NO_PROXY="+c.NodeIP, "no_proxy="+c.NodeIP)
	return cmd
}

func (c *Cluster) etcdCmd() *exec.Cmd {
	client := fmt.Sprintf("http://127.0.0.1:%d", etcdClientPort)
	peer := fmt.Sprintf("http://127.0.0.1:%d", etcdPeerPort)
	return exec.Command(filepath.Join(c.assets, "etcd"), "--name", "realnode", "--data-dir", statePath("etcd"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "realnode="+peer,
		"--listen-metrics-urls", "", "--unsafe-no-fsync")
}

func (c *Cluster) apiserverCmd() *exec.Cmd {
	p := pki{dir: statePath("pki")}
	return exec.Command(filepath.Join(c.assets, "kube-apiserver"),
		"--etcd-servers", fmt.Sprintf("http://127.0.0.1:%d", etcdClientPort),
		"--bind-address", c.NodeIP, "--secure-port", fmt.Sprint(APIServerPort), "--advertise-address", c.NodeIP,
		"--kubelet-preferred-address-types", "InternalIP",
		"--tls-cert-file", p.path("apiserver.crt"), "--tls-private-key-file", p.path("apiserver.key"),
		"--client-ca-file", p.path("ca.crt"),
		"--kubelet-client-certificate", p.path("apiserver-kubelet-client.crt"), "--kubelet-client-key", p.path("apiserver-kubelet-client.key"),
		"--kubelet-certificate-authority", p.path("ca.crt"),
		"--service-account-issuer", "https://kubernetes.default.svc", "--service-account-key-file", p.path("sa.pub"),
		"--service-account-signing-key-file", p.path("sa.key"),
		"--service-cluster-ip-range", c.ServiceCIDR, "--authorization-mode", "Node,RBAC",
		"--enable-admission-plugins", "NodeRestriction", "--allow-privileged=true")
}

// componentCmd is the command of kube-controller-manager, kube-scheduler, kubelet or kube-proxy.
func (c *Cluster) componentCmd(name string) *exec.Cmd {
	p := pki{dir: statePath("pki")}
	bin := filepath.Join(c.nodeAssets, name)
	var args []string
	switch name {
	case "kube-controller-manager":
		kc := p.kubeconfig(name)
		args = []string{"--kubeconfig", kc, "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc,
			"--bind-address", "127.0.0.1", "--secure-port", "10257", "--leader-elect=false",
			"--service-account-private-key-file", p.path("sa.key"), "--root-ca-file", p.path("ca.crt"),
			"--use-service-account-credentials", "--cluster-signing-cert-file", p.path("ca.crt"),
			"--cluster-signing-key-file", p.path("ca.key"), "--service-cluster-ip-range", c.ServiceCIDR,
			"--allocate-node-cidrs=false", "--flex-volume-plugin-dir", statePath("kcm-flexvolume")}
	case "kube-scheduler":
		kc := p.kubeconfig(name)
		args = []string{"--kubeconfig", kc, "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc,
			"--bind-address", "127.0.0.1", "--secure-port", "10259", "--leader-elect=false"}
	case "kubelet":
		args = []string{"--config", statePath("kubelet.yaml"), "--kubeconfig", p.kubeconfig("kubelet"),
			"--hostname-override", c.NodeName, "--node-ip", c.NodeIP, "--root-dir", kubeletRoot,
			"--cert-dir", statePath("kubelet-pki")}
	case "kube-proxy":
		args = []string{"--config", statePath("kube-proxy.yaml")}
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = c.pathEnv()
	return cmd
}

// containerd v2 (config version 3). Each setting was a failure on these machines first:
// restrict_oom_score_adj because root here lacks CAP_SYS_RESOURCE (runc cannot lower
// oom_score_adj), the network namespaces and runc's state under our own directories so teardown
// finds them, and no NRI. The registry's config_path is how users trust a private registry
// (certs.d/HOST:PORT/hosts.toml; see registry.go).
const containerdConfig = `version = 3
root = %q
state = %q
disabled_plugins = ["io.containerd.nri.v1.nri"]
[grpc]
  address = %q
[plugins.'io.containerd.internal.v1.opt']
  path = %q
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %q
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = %q
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_cdi = false
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
        Root = %q
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = %q
`

// The bridge network on our bridge; no masquerading (nothing leaves the bridge).
const cniConfig = `{
  "cniVersion": "1.0.0",
  "name": %q,
  "plugins": [
    {
      "type": "bridge",
      "bridge": %q,
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "%s", "gateway": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": %q
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`

// failCgroupV1: these machines run cgroup v1, which 1.35+ refuses by default. resolvConf "": pods get
// no nameserver (no DNS add-on, and they must never query the machine's resolver). Image GC off: the
// images are imported or pulled from the node's registry once, and must stay for the whole test.
const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://%s
address: %s
port: 10250
healthzBindAddress: 127.0.0.1
healthzPort: 10248
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %s}
authorization:
  mode: Webhook
tlsCertFile: %s
tlsPrivateKeyFile: %s
evictionHard: {"memory.available": "100Mi", "nodefs.available": "1%%", "imagefs.available": "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
failSwapOn: false
serializeImagePulls: false
podLogsDir: %s
volumePluginDir: %s
resolvConf: ""
`

const kubeProxyConfig = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %s
hostnameOverride: %s
mode: iptables
clusterCIDR: %s
bindAddress: %s
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["%s/32"]
iptables:
  localhostNodePorts: false
  masqueradeAll: false
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`
