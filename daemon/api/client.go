package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"syscall"
	"time"

	"tapswitch/ipam"
	vswitch "tapswitch/switch"
)

// DefaultSocket is where tapswitchd listens and clients look by default.
const DefaultSocket = "/run/tapswitch/tapswitchd.sock"

// ErrUnavailable means the daemon did not answer: it is not running, or
// its socket is somewhere else. Callers may try again later.
var ErrUnavailable = errors.New("tapswitchd is not answering")

// APIError is an error answer of the daemon.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return e.Message }

// Client talks to tapswitchd over its unix socket. It is safe for
// concurrent use.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client of the daemon listening on socket.
func NewClient(socket string) *Client {
	if socket == "" {
		socket = DefaultSocket
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:    4,
		IdleConnTimeout: 30 * time.Second,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr, Timeout: 60 * time.Second}}
}

// AddPod attaches a pod.
func (c *Client) AddPod(ctx context.Context, req PodRequest) (Pod, error) {
	var pod Pod
	err := c.do(ctx, http.MethodPost, "/v1/pods", req, &pod)
	return pod, err
}

// DeletePod detaches a pod and removes its TAP.
func (c *Client) DeletePod(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/pods/"+url.PathEscape(id), nil, nil)
}

// Pod returns one pod.
func (c *Client) Pod(ctx context.Context, id string) (Pod, error) {
	var pod Pod
	err := c.do(ctx, http.MethodGet, "/v1/pods/"+url.PathEscape(id), nil, &pod)
	return pod, err
}

// CheckPod checks that the pod's interface is as the daemon made it; an
// *APIError with status 409 says what differs.
func (c *Client) CheckPod(ctx context.Context, id string) (Pod, error) {
	var pod Pod
	err := c.do(ctx, http.MethodGet, "/v1/pods/"+url.PathEscape(id)+"/check", nil, &pod)
	return pod, err
}

// Status returns the pods count and the address pools.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &st)
	return st, err
}

// Pods lists the attached pods.
func (c *Client) Pods(ctx context.Context) ([]Pod, error) {
	var pods []Pod
	err := c.do(ctx, http.MethodGet, "/v1/pods", nil, &pods)
	return pods, err
}

// FDB lists the learned MACs.
func (c *Client) FDB(ctx context.Context) ([]vswitch.FDBRecord, error) {
	var fdb []vswitch.FDBRecord
	err := c.do(ctx, http.MethodGet, "/v1/fdb", nil, &fdb)
	return fdb, err
}

// Leases lists the address leases.
func (c *Client) Leases(ctx context.Context) ([]ipam.Lease, error) {
	var leases []ipam.Lease
	err := c.do(ctx, http.MethodGet, "/v1/ipam", nil, &leases)
	return leases, err
}

// Stats returns the switch's counters.
func (c *Client) Stats(ctx context.Context) (Stats, error) {
	var st Stats
	err := c.do(ctx, http.MethodGet, "/v1/stats", nil, &st)
	return st, err
}

// Node returns this node's entry for a peers file.
func (c *Client) Node(ctx context.Context) (Node, error) {
	var n Node
	err := c.do(ctx, http.MethodGet, "/v1/node", nil, &n)
	return n, err
}

// Peers lists the overlay's peers with their traffic.
func (c *Client) Peers(ctx context.Context) ([]Peer, error) {
	var ps []Peer
	err := c.do(ctx, http.MethodGet, "/v1/peers", nil, &ps)
	return ps, err
}

// AddForward makes a port forward.
func (c *Client) AddForward(ctx context.Context, req ForwardRequest) (Forward, error) {
	var fw Forward
	err := c.do(ctx, http.MethodPost, "/v1/forwards", req, &fw)
	return fw, err
}

// DeleteForward removes the port forward of proto ("tcp" or "udp") on the
// listen address.
func (c *Client) DeleteForward(ctx context.Context, proto, listen string) error {
	if proto == "" {
		proto = ProtoTCP
	}
	return c.do(ctx, http.MethodDelete, "/v1/forwards/"+url.PathEscape(proto)+"/"+url.PathEscape(listen), nil, nil)
}

// Forwards lists the port forwards.
func (c *Client) Forwards(ctx context.Context) ([]Forward, error) {
	var fws []Forward
	err := c.do(ctx, http.MethodGet, "/v1/forwards", nil, &fws)
	return fws, err
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://tapswitchd"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("%w: no daemon on socket %s (is tapswitchd running?)", ErrUnavailable, c.socket)
		}
		return fmt.Errorf("%w: socket %s: %v", ErrUnavailable, c.socket, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode >= 300 {
		var ae ErrorBody
		if json.Unmarshal(b, &ae) != nil || ae.Error == "" {
			ae.Error = fmt.Sprintf("daemon answered %s", resp.Status)
		}
		return &APIError{Status: resp.StatusCode, Message: ae.Error}
	}
	if out == nil || len(b) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	return nil
}
