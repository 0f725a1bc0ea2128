package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"tapswitch/daemon/api"
)

// maxBody bounds a request body; a pod request is a few hundred bytes.
const maxBody = 1 << 16

// handler returns the API: HTTP + JSON, versioned paths.
func (d *Daemon) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/pods", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.Pods())
	})
	mux.HandleFunc("POST /v1/pods", d.handleAddPod)
	mux.HandleFunc("GET /v1/pods/{id}", func(w http.ResponseWriter, r *http.Request) {
		pod, err := d.PodByID(r.PathValue("id"))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, pod)
	})
	mux.HandleFunc("GET /v1/pods/{id}/check", func(w http.ResponseWriter, r *http.Request) {
		pod, err := d.CheckPod(r.PathValue("id"))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, pod)
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.Status())
	})
	mux.HandleFunc("DELETE /v1/pods/{id}", func(w http.ResponseWriter, r *http.Request) {
		if err := d.DeletePod(r.PathValue("id")); err != nil {
			writeError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /v1/fdb", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.sw.FDB())
	})
	mux.HandleFunc("GET /v1/ipam", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.Leases())
	})
	mux.HandleFunc("GET /v1/stats", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.Stats())
	})
	mux.HandleFunc("GET /v1/node", func(w http.ResponseWriter, r *http.Request) {
		n, err := d.Node()
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, n)
	})
	mux.HandleFunc("GET /v1/peers", func(w http.ResponseWriter, r *http.Request) {
		ps, err := d.Peers()
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, ps)
	})
	mux.HandleFunc("GET /v1/forwards", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.Forwards())
	})
	mux.HandleFunc("POST /v1/forwards", d.handleAddForward)
	mux.HandleFunc("DELETE /v1/forwards/{proto}/{listen}", func(w http.ResponseWriter, r *http.Request) {
		if err := d.DeleteForward(r.PathValue("proto"), r.PathValue("listen")); err != nil {
			writeError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.Handle("GET /metrics", d.metrics)
	return mux
}

// readyPods counts the attached pods, not those being added or deleted.
func (d *Daemon) readyPods() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, e := range d.pods {
		if e.state == podReady {
			n++
		}
	}
	return n
}

// Stats returns the switch's counters.
func (d *Daemon) Stats() api.Stats {
	ports := d.sw.Stats()
	st := api.Stats{Pods: d.readyPods(), Ports: ports, Egress: string(d.opts.Egress)}
	for _, p := range ports {
		st.FDBEntries += p.FDBEntries
	}
	if d.opts.Egress == EgressRoute {
		r := d.sw.RouterStats()
		st.Router = &api.RouterStats{
			ICMPSent: r.ICMPSent, ICMPRateLimited: r.ICMPRateLimited, NoRoute: r.NoRoute,
			Fragments: r.Fragments, HostFlows: r.HostFlows, HostFlowsEvicted: r.HostFlowsEvicted,
		}
	}
	return st
}

func (d *Daemon) handleAddPod(w http.ResponseWriter, r *http.Request) {
	var req api.PodRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, fmt.Errorf("%w: body: %v", ErrInvalid, err))
		return
	}
	pod, err := d.AddPod(req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, pod)
}

func (d *Daemon) handleAddForward(w http.ResponseWriter, r *http.Request) {
	var req api.ForwardRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, fmt.Errorf("%w: body: %v", ErrInvalid, err))
		return
	}
	fw, err := d.AddForward(req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, fw)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// writeError answers with the status that fits err and its message.
func writeError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrInvalid):
		status = http.StatusBadRequest
	case errors.Is(err, ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, ErrBusy):
		status = http.StatusServiceUnavailable
	case errors.Is(err, ErrConflict), errors.Is(err, ErrMismatch):
		status = http.StatusConflict
	case errors.Is(err, ErrExhausted):
		status = http.StatusInsufficientStorage
	}
	writeJSON(w, status, api.ErrorBody{Error: err.Error()})
}
