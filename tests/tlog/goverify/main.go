// Command goverify checks ffaudit's transparency-log artefacts with the Go
// ecosystem's own implementations, independently of the Python code that made
// them:
//
//   - signed notes and Ed25519 log signatures: golang.org/x/mod/sumdb/note
//   - cosignature/v1 witness signatures: github.com/transparency-dev/formats/note
//   - checkpoint bodies: github.com/transparency-dev/formats/log
//   - RFC 6962 inclusion and consistency proofs: github.com/transparency-dev/merkle
//
// Only the c2sp.org/tlog-proof@v1 container is parsed here, by hand, because no
// Go module ships a parser for it (https://c2sp.org/tlog-proof).
//
// Usage:
//
//	goverify CASES.json
//
// CASES.json is {"cases": [...]}; every byte string in it is standard base64.
// The output is one JSON object per case, one a line, in input order:
// {"id": ..., "ok": bool, "error": "..."} plus what was parsed (size, root,
// index, cosigners) where parsing got that far. The exit status is 0 when every
// case was evaluated, whatever the verdicts, and 2 when the input is unusable.
package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/transparency-dev/formats/log"
	fnote "github.com/transparency-dev/formats/note"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

// Case is one verification request. Which fields matter depends on Kind.
type Case struct {
	ID   string `json:"id"`
	Kind string `json:"kind"` // "checkpoint", "inclusion" or "consistency"

	// checkpoint and inclusion: the trust policy.
	Origin       string   `json:"origin"` // defaults to the log key's name
	LogVKey      string   `json:"log_vkey"`
	WitnessVKeys []string `json:"witness_vkeys"`
	Quorum       int      `json:"quorum"`

	// checkpoint: the signed note, byte for byte.
	Note string `json:"note"`

	// inclusion: the .tlog-proof file and the logged entry, byte for byte.
	TlogProof string `json:"tlog_proof"`
	Entry     string `json:"entry"`

	// consistency.
	OldSize uint64   `json:"old_size"`
	NewSize uint64   `json:"new_size"`
	OldRoot string   `json:"old_root"`
	NewRoot string   `json:"new_root"`
	Proof   []string `json:"proof"`
}

// Result is one output line.
type Result struct {
	ID        string   `json:"id"`
	OK        bool     `json:"ok"`
	Error     string   `json:"error"`
	Size      *uint64  `json:"size,omitempty"`
	Root      string   `json:"root,omitempty"`
	Index     *uint64  `json:"index,omitempty"`
	Cosigners []string `json:"cosigners,omitempty"`
}

const tlogProofHeader = "c2sp.org/tlog-proof@v1"

var b64 = base64.StdEncoding.Strict()

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: goverify CASES.json")
		os.Exit(2)
	}
	data, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var input struct {
		Cases []Case `json:"cases"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&input); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", os.Args[1], err)
		os.Exit(2)
	}
	out := bufio.NewWriter(os.Stdout)
	enc := json.NewEncoder(out)
	for _, c := range input.Cases {
		r := Result{ID: c.ID}
		var err error
		switch c.Kind {
		case "checkpoint":
			err = verifyCheckpointCase(c, &r)
		case "inclusion":
			err = verifyInclusionCase(c, &r)
		case "consistency":
			err = verifyConsistencyCase(c)
		default:
			err = fmt.Errorf("unknown case kind %q", c.Kind)
		}
		r.OK = err == nil
		if err != nil {
			r.Error = err.Error()
		}
		if err := enc.Encode(r); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
	if err := out.Flush(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
}

func verifyCheckpointCase(c Case, r *Result) error {
	msg, err := b64.DecodeString(c.Note)
	if err != nil {
		return fmt.Errorf("case input: note is not base64: %v", err)
	}
	_, err = openCheckpoint(msg, c, r)
	return err
}

// openCheckpoint verifies the log's signature (sumdb/note), parses the body
// (formats/log), and requires c.Quorum distinct configured witnesses to have
// a valid cosignature/v1 on it (formats/note).
func openCheckpoint(msg []byte, c Case, r *Result) (*log.Checkpoint, error) {
	logV, err := note.NewVerifier(c.LogVKey)
	if err != nil {
		return nil, fmt.Errorf("log vkey: %v", err)
	}
	witnesses := make([]note.Verifier, 0, len(c.WitnessVKeys))
	for _, vkey := range c.WitnessVKeys {
		v, err := newCosignatureVerifier(vkey)
		if err != nil {
			return nil, fmt.Errorf("witness vkey %q: %v", vkey, err)
		}
		witnesses = append(witnesses, v)
	}
	origin := c.Origin
	if origin == "" {
		origin = logV.Name()
	}
	// A known key whose signature does not verify makes note.Open reject the
	// whole note, as c2sp.org/signed-note recommends.
	cp, _, n, err := log.ParseCheckpoint(msg, origin, logV, witnesses...)
	if err != nil {
		return nil, err
	}
	size := cp.Size
	r.Size = &size
	r.Root = base64.StdEncoding.EncodeToString(cp.Hash)
	if len(cp.Hash) != rfc6962.DefaultHasher.Size() {
		return nil, fmt.Errorf("checkpoint root hash is %d bytes, not %d", len(cp.Hash), rfc6962.DefaultHasher.Size())
	}
	cosigned := 0
	for _, w := range witnesses {
		for _, s := range n.Sigs {
			if s.Name == w.Name() && s.Hash == w.KeyHash() {
				if _, err := fnote.CoSigV1Timestamp(s); err != nil {
					return nil, fmt.Errorf("cosignature by %s: %v", s.Name, err)
				}
				r.Cosigners = append(r.Cosigners, s.Name)
				cosigned++
				break
			}
		}
	}
	if cosigned < c.Quorum {
		return nil, fmt.Errorf("%d of the %d configured witnesses cosigned, quorum is %d", cosigned, len(witnesses), c.Quorum)
	}
	return cp, nil
}

// newCosignatureVerifier is formats/note's cosignature/v1 verifier, plus the
// check that the vkey's key ID is the one c2sp.org/tlog-cosignature defines:
// NewVerifierForCosignatureV1 recomputes the ID and ignores the encoded one.
func newCosignatureVerifier(vkey string) (note.Verifier, error) {
	v, err := fnote.NewVerifierForCosignatureV1(vkey)
	if err != nil {
		return nil, err
	}
	parts := strings.SplitN(vkey, "+", 3)
	if len(parts) != 3 {
		return nil, errors.New("malformed vkey")
	}
	hash, err := strconv.ParseUint(parts[1], 16, 32)
	if err != nil {
		return nil, fmt.Errorf("malformed key ID %q", parts[1])
	}
	if uint32(hash) != v.KeyHash() {
		return nil, fmt.Errorf("key ID %08x in the vkey, %08x by c2sp.org/tlog-cosignature", hash, v.KeyHash())
	}
	key, _ := b64.DecodeString(parts[2])
	if len(key) == 0 || key[0] != 0x04 {
		return nil, errors.New("not an Ed25519 cosignature/v1 vkey (type 0x04)")
	}
	return v, nil
}

// TlogProof is a parsed c2sp.org/tlog-proof@v1 file.
type TlogProof struct {
	Extra      []byte
	Index      uint64
	Hashes     [][]byte
	Checkpoint []byte
}

// parseTlogProof follows https://c2sp.org/tlog-proof strictly.
func parseTlogProof(data []byte) (*TlogProof, error) {
	p := &TlogProof{}
	rest := data
	next := func() (string, bool) {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			return "", false
		}
		line := string(rest[:i])
		rest = rest[i+1:]
		return line, true
	}
	line, ok := next()
	if !ok || line != tlogProofHeader {
		return nil, fmt.Errorf("tlog-proof: first line is not %q", tlogProofHeader)
	}
	if line, ok = next(); !ok {
		return nil, errors.New("tlog-proof: truncated after the header")
	}
	if e, found := strings.CutPrefix(line, "extra "); found {
		extra, err := b64.DecodeString(e)
		if err != nil {
			return nil, fmt.Errorf("tlog-proof: extra is not base64: %v", err)
		}
		p.Extra = extra
		if line, ok = next(); !ok {
			return nil, errors.New("tlog-proof: truncated after the extra line")
		}
	}
	digits, found := strings.CutPrefix(line, "index ")
	if !found {
		return nil, fmt.Errorf("tlog-proof: expected an index line, got %q", line)
	}
	if digits == "" || (digits[0] == '0' && digits != "0") || strings.Trim(digits, "0123456789") != "" {
		return nil, fmt.Errorf("tlog-proof: index %q is not a canonical decimal", digits)
	}
	index, err := strconv.ParseUint(digits, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("tlog-proof: index: %v", err)
	}
	p.Index = index
	for {
		if line, ok = next(); !ok {
			return nil, errors.New("tlog-proof: no empty line before the checkpoint")
		}
		if line == "" {
			break
		}
		h, err := b64.DecodeString(line)
		if err != nil {
			return nil, fmt.Errorf("tlog-proof: proof line %d is not base64: %v", len(p.Hashes), err)
		}
		if len(h) != rfc6962.DefaultHasher.Size() {
			return nil, fmt.Errorf("tlog-proof: proof line %d is %d bytes, not a SHA-256 hash", len(p.Hashes), len(h))
		}
		p.Hashes = append(p.Hashes, h)
	}
	p.Checkpoint = rest
	return p, nil
}

func verifyInclusionCase(c Case, r *Result) error {
	data, err := b64.DecodeString(c.TlogProof)
	if err != nil {
		return fmt.Errorf("case input: tlog_proof is not base64: %v", err)
	}
	entry, err := b64.DecodeString(c.Entry)
	if err != nil {
		return fmt.Errorf("case input: entry is not base64: %v", err)
	}
	p, err := parseTlogProof(data)
	if err != nil {
		return err
	}
	index := p.Index
	r.Index = &index
	cp, err := openCheckpoint(p.Checkpoint, c, r)
	if err != nil {
		return err
	}
	leaf := rfc6962.DefaultHasher.HashLeaf(entry)
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, p.Index, cp.Size, leaf, p.Hashes, cp.Hash); err != nil {
		return fmt.Errorf("inclusion of leaf %d in the tree of size %d: %v", p.Index, cp.Size, err)
	}
	return nil
}

func verifyConsistencyCase(c Case) error {
	oldRoot, err := b64.DecodeString(c.OldRoot)
	if err != nil {
		return fmt.Errorf("case input: old_root is not base64: %v", err)
	}
	newRoot, err := b64.DecodeString(c.NewRoot)
	if err != nil {
		return fmt.Errorf("case input: new_root is not base64: %v", err)
	}
	hashes := make([][]byte, 0, len(c.Proof))
	for i, s := range c.Proof {
		h, err := b64.DecodeString(s)
		if err != nil {
			return fmt.Errorf("case input: proof hash %d is not base64: %v", i, err)
		}
		hashes = append(hashes, h)
	}
	if err := proof.VerifyConsistency(rfc6962.DefaultHasher, c.OldSize, c.NewSize, hashes, oldRoot, newRoot); err != nil {
		return fmt.Errorf("consistency %d -> %d: %v", c.OldSize, c.NewSize, err)
	}
	return nil
}
