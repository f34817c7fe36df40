package main

// The verbs. Each returns what goes to stdout on success (nil for nothing) or a *cniError.

type invocation struct {
	command     string
	version     string
	settings    *settings
	containerID string
	ifname      string
	netns       string
	pod         pod
}

// configured is what every verb but VERSION reads first: the config's cniVersion for this
// verb and the plugin's settings; from here on the log also goes to the settings' log file.
func configured(command string, conf *object, log *logger) (string, *settings, error) {
	version, err := configVersion(conf, command)
	if err != nil {
		return "", nil, err
	}
	s, err := parseSettings(conf)
	if err != nil {
		return "", nil, err
	}
	log.logFile = s.logFile
	return version, s, nil
}

// newInvocation gathers what every attachment verb needs: version, settings, env, pod.
func newInvocation(command string, conf *object, log *logger, netnsRequired bool) (*invocation, error) {
	version, s, err := configured(command, conf, log)
	if err != nil {
		return nil, err
	}
	inv := &invocation{command: command, version: version, settings: s}
	if inv.containerID, err = requireEnv("CNI_CONTAINERID"); err != nil {
		return nil, err
	}
	if inv.ifname, err = requireEnv("CNI_IFNAME"); err != nil {
		return nil, err
	}
	if netnsRequired {
		if inv.netns, err = requireEnv("CNI_NETNS"); err != nil {
			return nil, err
		}
	} else {
		inv.netns = getenv("CNI_NETNS") // DEL: the netns may be gone already
	}
	if !validContainerID(inv.containerID) {
		return nil, cniErr(errInvalidEnvironment, "invalid CNI_CONTAINERID "+pyRepr(clip(inv.containerID, 128)), "")
	}
	if !validIfname(inv.ifname) {
		return nil, cniErr(errInvalidEnvironment, "invalid CNI_IFNAME "+pyRepr(clip(inv.ifname, 128)), "")
	}
	args, err := parseCNIArgs(getenv("CNI_ARGS"))
	if err != nil {
		return nil, err
	}
	inv.pod = pod{name: args["K8S_POD_NAME"], namespace: args["K8S_POD_NAMESPACE"],
		uid: args["K8S_POD_UID"], infraContainerID: args["K8S_POD_INFRA_CONTAINER_ID"]}
	log.setField("container_id", strValue(inv.containerID))
	log.setField("pod", strValue(inv.pod.ref()))
	return inv, nil
}

func baseRequest(command string, s *settings, version string) *object {
	config := newObject()
	config.set("name", strValue(s.name))
	config.set("cniVersion", strValue(version))
	config.set("capture", s.capture)
	req := newObject()
	req.set("v", intValue(protocolVersion))
	req.set("cmd", strValue(command))
	req.set("config", objValue(config))
	return req
}

func (inv *invocation) request(ips []string) *object {
	req := baseRequest(inv.command, inv.settings, inv.version)
	req.set("container_id", strValue(inv.containerID))
	req.set("netns", strValue(inv.netns))
	req.set("ifname", strValue(inv.ifname))
	req.set("pod", inv.pod.toJSON())
	req.set("ips", strList(ips))
	return req
}

// orCode is the agent's code, or fallback if it gave none.
func orCode(code string, fallback int) string {
	if code == "" {
		return itoa(fallback)
	}
	return code
}

func cmdAdd(conf *object, log *logger) ([]byte, error) {
	inv, err := newInvocation("ADD", conf, log, true)
	if err != nil {
		return nil, err
	}
	prev, err := prevResult(conf, true)
	if err != nil {
		return nil, err
	}
	ips, err := extractIPs(prev)
	if err != nil {
		return nil, err
	}
	result, err := convertResult(prev, inv.version)
	if err != nil {
		return nil, err
	}
	if reason := bypassReason(inv.settings, inv.pod); reason != "" {
		log.info("pod passed through without capture", field("reason", strValue(reason)))
		return dump(objValue(result)), nil
	}
	reply, aerr := callAgent(inv.settings.socket, inv.request(ips), inv.settings.timeout, true)
	if aerr != nil {
		return nil, cniErr(errTryAgainLater, aerr.describe(inv.settings.socket)+"; pod would run uncaptured",
			"failing the sandbox so that the runtime retries it once the agent is ready")
	}
	if !reply.get("ok").b {
		code, msg, details := agentFailure(reply)
		return nil, &cniError{orCode(code, errTryAgainLater),
			"meshnode agent refused to capture the pod: " + msg + "; pod would run uncaptured", details}
	}
	detail := strValue("")
	if d := reply.get("detail"); d != nil {
		detail = strValue(pyStr(d))
	}
	log.info("pod captured", field("ips", strList(ips)), field("detail", detail))
	return dump(objValue(result)), nil
}

func cmdDel(conf *object, log *logger) ([]byte, error) {
	inv, err := newInvocation("DEL", conf, log, false)
	if err != nil {
		return nil, err
	}
	if reason := bypassReason(inv.settings, inv.pod); reason != "" {
		log.info("DEL for pod that was never captured", field("reason", strValue(reason)))
		return nil, nil
	}
	ips := []string{}
	prev, err := prevResult(conf, false)
	if err == nil && prev != nil {
		if got, e := extractIPs(prev); e == nil {
			ips = got
		} else {
			err = e
		}
	}
	if err != nil {
		// DEL must clean up as much as possible; the agent keys on the container ID anyway.
		log.warn("ignoring unusable prevResult on DEL", field("error", strValue(err.(*cniError).msg)))
	}
	timeout := inv.settings.timeout
	if timeout > quickTimeout {
		timeout = quickTimeout
	}
	reply, aerr := callAgent(inv.settings.socket, inv.request(ips), timeout, false)
	if aerr != nil {
		// Idempotent and best-effort (spec): the agent also reconciles from the pod informer.
		log.warn("agent not told about DEL", field("error", strValue(aerr.describe(inv.settings.socket))))
		return nil, nil
	}
	if !reply.get("ok").b {
		_, msg, _ := agentFailure(reply)
		log.warn("agent reported a DEL problem", field("error", strValue(msg)))
	} else {
		log.info("pod released")
	}
	return nil, nil
}

func cmdCheck(conf *object, log *logger) ([]byte, error) {
	inv, err := newInvocation("CHECK", conf, log, true)
	if err != nil {
		return nil, err
	}
	prev, err := prevResult(conf, true)
	if err != nil {
		return nil, err
	}
	ips, err := extractIPs(prev)
	if err != nil {
		return nil, err
	}
	if bypassReason(inv.settings, inv.pod) != "" {
		return nil, nil // ADD did not capture it, so there is nothing to verify
	}
	reply, aerr := callAgent(inv.settings.socket, inv.request(ips), inv.settings.timeout, false)
	if aerr != nil {
		return nil, cniErr(errTryAgainLater, "cannot verify capture: "+aerr.describe(inv.settings.socket), "")
	}
	if !reply.get("ok").b {
		code, msg, details := agentFailure(reply)
		return nil, &cniError{orCode(code, errCaptureDrift), "pod traffic capture is missing or drifted: " + msg, details}
	}
	return nil, nil
}

func cmdStatus(conf *object, log *logger) ([]byte, error) {
	version, s, err := configured("STATUS", conf, log)
	if err != nil {
		return nil, err
	}
	timeout := s.timeout
	if timeout > quickTimeout {
		timeout = quickTimeout
	}
	reply, aerr := callAgent(s.socket, baseRequest("STATUS", s, version), timeout, false)
	if aerr != nil {
		return nil, cniErr(errPluginNotAvailable, aerr.describe(s.socket)+"; new pods cannot be captured", "")
	}
	if !reply.get("ok").b {
		code, msg, details := agentFailure(reply)
		// STATUS has exactly two meaningful codes; anything else means "not available".
		if code != itoa(errPluginNotAvailable) && code != itoa(errLimitedConnectivity) {
			code = itoa(errPluginNotAvailable)
		}
		return nil, &cniError{code, "meshnode agent is not ready: " + msg, details}
	}
	return nil, nil
}

func cmdGC(conf *object, log *logger) ([]byte, error) {
	version, s, err := configured("GC", conf, log)
	if err != nil {
		return nil, err
	}
	req := baseRequest("GC", s, version)
	attachments, err := validAttachments(conf)
	if err != nil {
		return nil, err
	}
	req.set("attachments", listValue(attachments))
	reply, aerr := callAgent(s.socket, req, s.timeout, false)
	if aerr != nil {
		return nil, cniErr(errTryAgainLater, aerr.describe(s.socket)+"; nothing was garbage-collected", "")
	}
	if !reply.get("ok").b {
		code, msg, details := agentFailure(reply)
		return nil, &cniError{orCode(code, errTryAgainLater), "meshnode agent GC failed: " + msg, details}
	}
	log.info("GC done", field("valid", intValue(int64(len(attachments)))))
	return nil, nil
}

// validAttachments is the runtime's valid attachments, renamed to the agent protocol's keys.
// libcni sends the list under both "cni.dev/valid-attachments" and "cni.dev/attachments"
// (an earlier spec draft used the latter). A missing list is an error, not an empty one:
// an empty list tells the agent to release every pod on the node.
func validAttachments(conf *object) ([]*value, error) {
	key := "cni.dev/valid-attachments"
	if !conf.has(key) {
		key = "cni.dev/attachments"
	}
	entries := conf.get(key)
	if entries == nil || entries.kind != jArray {
		return nil, cniErr(errInvalidConfig, "GC needs a cni.dev/valid-attachments list", "")
	}
	out := make([]*value, 0, len(entries.items))
	for i, entry := range entries.items {
		var cid, ifname *value
		if entry.kind == jObject {
			cid, ifname = entry.obj.get("containerID"), entry.obj.get("ifname")
		}
		if cid == nil || cid.kind != jString || cid.text == "" || ifname == nil || ifname.kind != jString {
			return nil, cniErr(errInvalidConfig, "cni.dev/valid-attachments["+itoa(i)+
				"] needs string containerID and ifname", "")
		}
		a := newObject()
		a.set("container_id", cid)
		a.set("ifname", ifname)
		out = append(out, objValue(a))
	}
	return out, nil
}
