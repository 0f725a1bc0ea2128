package daemon

// load and save are the pods-only view of the state file that the pod
// tests (pods_test.go, restore_test.go) seed and check it through.

// load returns the saved pods.
func (s *stateFile) load() ([]savedPod, error) {
	st, err := s.read()
	return st.Pods, err
}

// save replaces the file with pods and no forwards.
func (s *stateFile) save(pods []savedPod) error {
	return s.write(savedState{Pods: pods})
}
