package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"tapswitch/daemon/api"

	"golang.org/x/sys/unix"
)

// stateFile keeps the attached pods and the port forwards on disk, so a
// restarted daemon knows them again. Every change rewrites the whole file
// through a temporary file, fsync and rename, so a crash leaves the old or
// the new version, never a torn one. The daemon holds an flock on the
// state folder while it runs, so two daemons never share one.
type stateFile struct {
	path string
	lock *os.File
}

// savedState is the file's content. Forwards were added to version 1
// without a new version: a file without them has none, and an older daemon
// reading a newer file ignores them (and drops them at its next save).
type savedState struct {
	Version  int           `json:"version"`
	Pods     []savedPod    `json:"pods"`
	Forwards []api.Forward `json:"forwards,omitempty"`
}

// savedPod is a pod and, while an add or delete is under way, which.
type savedPod struct {
	api.Pod
	State podState `json:"state,omitempty"`
}

const stateVersion = 1

func openState(path string) (*stateFile, error) {
	lockPath := filepath.Join(filepath.Dir(path), "lock")
	lock, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("state dir %s is in use by another tapswitchd", filepath.Dir(path))
		}
		return nil, fmt.Errorf("state: lock %s: %w", lockPath, err)
	}
	return &stateFile{path: path, lock: lock}, nil
}

// read returns the saved pods and forwards; none if the file does not
// exist yet. A file that cannot be read or parsed is an error naming it,
// never a silent reset.
func (s *stateFile) read() (savedState, error) {
	b, err := os.ReadFile(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return savedState{Version: stateVersion}, nil
	}
	if err != nil {
		return savedState{}, fmt.Errorf("state: %w", err)
	}
	var st savedState
	if err := json.Unmarshal(b, &st); err != nil {
		return savedState{}, fmt.Errorf("state file %s is corrupt (move it away to start empty, which forgets every pod): %w", s.path, err)
	}
	if st.Version != stateVersion {
		return savedState{}, fmt.Errorf("state file %s has version %d, this tapswitchd reads version %d", s.path, st.Version, stateVersion)
	}
	return st, nil
}

// write replaces the file with st, atomically. It sets st's version.
func (s *stateFile) write(st savedState) error {
	st.Version = stateVersion
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("state: %w", err)
	}
	tmp := s.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("state: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, s.path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("state: save %s: %w", s.path, err)
	}
	if dir, err := os.Open(filepath.Dir(s.path)); err == nil {
		dir.Sync()
		dir.Close()
	}
	return nil
}

func (s *stateFile) close() error {
	if s == nil || s.lock == nil {
		return nil
	}
	err := s.lock.Close()
	s.lock = nil
	return err
}
