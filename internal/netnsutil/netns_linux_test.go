package netnsutil_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"tapswitch/internal/netnsutil"
	"tapswitch/internal/testutil"
)

func TestOpenErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	_, err := netnsutil.Open(missing)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open(missing) = %v, want fs.ErrNotExist", err)
	}
	if want := "netns " + missing + ": no such file or directory"; err == nil || err.Error() != want {
		t.Errorf("Open(missing) error = %q, want %q", err, want)
	}

	plain := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(plain, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = netnsutil.Open(plain)
	if err == nil || !strings.Contains(err.Error(), "not a network namespace") || !errors.Is(err, netnsutil.ErrNotNetNS) {
		t.Errorf("Open(regular file) = %v, want ErrNotNetNS", err)
	}
	if !netnsutil.Gone(err) {
		t.Errorf("Gone(%v) = false, want true: a stale netns file holds no namespace", err)
	}
	if _, err := netnsutil.Open(missing); !netnsutil.Gone(err) {
		t.Errorf("Gone(%v) = false for a missing file", err)
	}
	if netnsutil.Gone(errors.New("permission denied")) {
		t.Error("Gone(other error) = true")
	}
	if err := netnsutil.Do(plain, func() error { return nil }); err == nil {
		t.Errorf("Do(regular file) = nil, want error")
	}
}

func TestDo(t *testing.T) {
	testutil.RequireRoot(t)
	path := testutil.NewNetNS(t)

	want, err := netnsutil.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer want.Close()
	before, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()

	sentinel := errors.New("sentinel")
	err = netnsutil.Do(path, func() error {
		cur, err := netns.Get()
		if err != nil {
			return err
		}
		defer cur.Close()
		if !cur.Equal(want) {
			t.Errorf("inside Do: netns %v, want %v", cur, want)
		}
		return sentinel
	})
	if !errors.Is(err, sentinel) {
		t.Errorf("Do = %v, want fn's error", err)
	}
	// The caller's thread never moved; check a fresh look at it.
	after, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	if !after.Equal(before) {
		t.Errorf("after Do: netns %v, want the original %v", after, before)
	}
}
