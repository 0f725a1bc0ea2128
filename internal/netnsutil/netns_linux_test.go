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
	if _, err := netnsutil.Open(plain); err == nil || !strings.Contains(err.Error(), "not a network namespace") {
		t.Errorf("Open(regular file) = %v, want not a network namespace", err)
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
