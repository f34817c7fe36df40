package main

// The network configuration and the environment: versions, the plugin's own keys
// (docs/cni-protocol.md, "Plugin config keys"), CNI_* variables and CNI_ARGS.

import (
	"strconv"
	"strings"
	"syscall"
)

var supportedVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

const preferredVersion = "1.1.0"

const (
	defaultSocket  = "/var/run/meshnode/cni.sock"
	defaultTimeout = 10.0
	maxTimeout     = 600.0
	// DEL and STATUS must not stall the runtime: DEL is best-effort, STATUS is polled.
	quickTimeout = 2.0
	maxIfname    = 15 // Linux interface names
)

func supported(version string) bool {
	for _, v := range supportedVersions {
		if v == version {
			return true
		}
	}
	return false
}

// legacyResult: 0.3.x and 0.4.0 share one result layout (ips carry "version"); 1.x dropped it.
func legacyResult(version string) bool {
	return version == "0.3.0" || version == "0.3.1" || version == "0.4.0"
}

// configVersion checks cniVersion, and that the verb exists in that version (as libcni does).
func configVersion(conf *object, command string) (string, error) {
	v := conf.get("cniVersion")
	if v == nil || v.kind != jString {
		return "", cniErr(errInvalidConfig, "network configuration has no cniVersion string", "")
	}
	version := v.text
	if !supported(version) {
		return "", cniErr(errIncompatibleVersion, "incompatible CNI version "+clip(version, 128),
			"supported versions: "+strings.Join(supportedVersions, ", "))
	}
	minimum := map[string]string{"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}[command]
	if minimum != "" && versionLess(version, minimum) {
		return "", cniErr(errIncompatibleVersion, "config version "+version+" does not allow "+command,
			command+" needs cniVersion "+minimum+" or later")
	}
	return version, nil
}

func versionLess(a, b string) bool {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for i := range pa {
		x, _ := strconv.Atoi(pa[i])
		y, _ := strconv.Atoi(pb[i])
		if x != y {
			return x < y
		}
	}
	return false
}

// settings are the plugin-specific keys of the conflist entry.
type settings struct {
	name             string
	socket           string
	timeout          float64
	excludeNamespace []string
	agentNamespace   string
	agentNamePrefix  string
	capture          *value
	logFile          string
}

// get is the key's value if present and not null, checked against the wanted kinds
// (a bool is never a number: true is not a timeout).
func get(conf *object, key string, kinds ...kind) (*value, error) {
	v := conf.get(key)
	if v == nil || v.kind == jNull {
		return nil, nil
	}
	for _, k := range kinds {
		if v.kind == k {
			return v, nil
		}
	}
	return nil, cniErr(errInvalidConfig, "invalid value for "+pyRepr(key)+" in network configuration", "")
}

func parseSettings(conf *object) (*settings, error) {
	s := &settings{socket: defaultSocket, timeout: defaultTimeout,
		excludeNamespace: []string{"kube-system"}, agentNamespace: "meshnode-system",
		agentNamePrefix: "meshnode-node-", capture: objValue(newObject())}
	v, err := get(conf, "name", jString)
	if err != nil {
		return nil, err
	} else if v != nil {
		s.name = v.text
	}
	if v, err = get(conf, "agent_socket", jString); err != nil {
		return nil, err
	} else if v != nil {
		s.socket = v.text
	}
	encoded, ok := fsEncode(s.socket)
	if s.socket == "" || strings.IndexByte(s.socket, 0) >= 0 || !ok || len(encoded) > maxSocketPath {
		return nil, cniErr(errInvalidConfig, "agent_socket must be a non-empty path of at most "+
			itoa(maxSocketPath)+" bytes", "")
	}
	if v, err = get(conf, "timeout_seconds", jInt, jFloat); err != nil {
		return nil, err
	} else if v != nil {
		if !(v.f > 0 && v.f <= maxTimeout) {
			return nil, cniErr(errInvalidConfig, "timeout_seconds must be in (0, "+pyG(maxTimeout)+"]", "")
		}
		s.timeout = v.f
	}
	if v, err = get(conf, "exclude_namespaces", jArray); err != nil {
		return nil, err
	} else if v != nil {
		s.excludeNamespace = nil
		for _, item := range v.items {
			if item.kind != jString {
				return nil, cniErr(errInvalidConfig, "exclude_namespaces must be a list of strings", "")
			}
			s.excludeNamespace = append(s.excludeNamespace, item.text)
		}
	}
	if v, err = get(conf, "agent_pod", jObject); err != nil {
		return nil, err
	} else if v != nil {
		ns, prefix := v.obj.get("namespace"), v.obj.get("name_prefix")
		// An empty prefix would silently exempt a whole namespace from capture; that is
		// what exclude_namespaces is for.
		if ns == nil || ns.kind != jString || prefix == nil || prefix.kind != jString || prefix.text == "" {
			return nil, cniErr(errInvalidConfig,
				"agent_pod must have string namespace and non-empty string name_prefix", "")
		}
		s.agentNamespace, s.agentNamePrefix = ns.text, prefix.text
	}
	if v, err = get(conf, "capture", jObject); err != nil {
		return nil, err
	} else if v != nil {
		s.capture = v
	}
	if v, err = get(conf, "log_file", jString); err != nil {
		return nil, err
	} else if v != nil {
		s.logFile = v.text
	}
	return s, nil
}

// getenv is os.environ.get(name, "") as Python sees it (non-UTF-8 bytes as surrogates).
func getenv(name string) string { return fromEnv(lookupEnv(name)) }

func lookupEnv(name string) string {
	v, _ := syscall.Getenv(name)
	return v
}

func requireEnv(name string) (string, error) {
	v := getenv(name)
	if v == "" {
		return "", cniErr(errInvalidEnvironment, "required environment variable "+name+" is unset", "")
	}
	return v, nil
}

func isAlnum(c rune) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// validContainerID: spec 1.1, an ASCII alphanumeric, then those, "_", "." or "-".
func validContainerID(s string) bool {
	if s == "" || !isAlnum(rune(s[0])) {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := rune(s[i])
		if !(isAlnum(c) || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// isPySpace is Python's str.isspace(): bidirectional class WS, B or S, or category Zs.
func isPySpace(c rune) bool {
	switch {
	case c >= 0x09 && c <= 0x0d, c >= 0x1c && c <= 0x20, c == 0x85, c == 0xa0, c == 0x1680,
		c >= 0x2000 && c <= 0x200a, c == 0x2028, c == 0x2029, c == 0x202f, c == 0x205f, c == 0x3000:
		return true
	}
	return false
}

// validIfname: at most 15 characters, not "." or "..", no "/", ":" or whitespace.
func validIfname(s string) bool {
	if s == "." || s == ".." {
		return false
	}
	n := 0
	for i := 0; i < len(s); {
		c, size := nextCP(s, i)
		if c == '/' || c == ':' || isPySpace(c) {
			return false
		}
		i += size
		n++
	}
	return n > 0 && n <= maxIfname
}

// parseCNIArgs parses "K=V;K=V". Unknown keys are kept (kubelet adds IgnoreUnknown=1); the
// last of a repeated key wins.
func parseCNIArgs(text string) (map[string]string, error) {
	args := map[string]string{}
	for _, pair := range strings.Split(text, ";") {
		if pair == "" {
			continue // tolerate "A=1;" and ";;"
		}
		key, val, found := strings.Cut(pair, "=")
		if !found || key == "" {
			return nil, cniErr(errInvalidEnvironment, "CNI_ARGS: invalid pair "+pyRepr(clip(pair, 128)), "")
		}
		args[key] = val
	}
	return args, nil
}

type pod struct{ name, namespace, uid, infraContainerID string }

func (p pod) ref() string {
	if p.namespace != "" || p.name != "" {
		return p.namespace + "/" + p.name
	}
	return ""
}

func (p pod) toJSON() *value {
	o := newObject()
	o.set("name", strValue(p.name))
	o.set("namespace", strValue(p.namespace))
	o.set("uid", strValue(p.uid))
	o.set("infra_container_id", strValue(p.infraContainerID))
	return objValue(o)
}

// bypassReason says why a pod is passed through without asking the agent ("" = ask it).
// A container without Kubernetes identity (plain ctr, podman, nerdctl) is still sent to the
// agent, unlike istio-cni: the agent's selection decides, so no runtime can bypass capture
// by omitting the args.
func bypassReason(s *settings, p pod) string {
	for _, ns := range s.excludeNamespace {
		if ns == p.namespace {
			return "namespace " + p.namespace + " is excluded"
		}
	}
	if p.namespace == s.agentNamespace && strings.HasPrefix(p.name, s.agentNamePrefix) {
		// Capturing the agent's own pod would need the agent that is not running yet.
		return "meshnode agent's own pod"
	}
	return ""
}
